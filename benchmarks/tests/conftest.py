"""The benchmarks' tests take the library tests' fixtures (tiny models, the toy checkpoints)."""

from tests.conftest import corpus, random_model, small_toy, tokenizer, toy, workspace  # noqa: F401
