"""Shared fixtures: tiny models built from the toy corpus, on CPU, in seconds."""

import json

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from logitguard.toy.corpus import build_corpus
from logitguard.toy.model import ToyRecipe, build_tokenizer, toy_models

# A toy recipe small enough to build in well under a minute; it learns to refuse, not much else.
SMALL_RECIPE = ToyRecipe(hidden_size=64, layers=2, heads=2, intermediate_size=128, base_steps=250, aligned_steps=150)


@pytest.fixture(scope="session")
def corpus():
    return build_corpus(0)


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return build_tokenizer(corpus)


@pytest.fixture
def random_model(tokenizer):
    """A random-weight tiny Llama on the toy tokenizer."""
    return tiny_llama(tokenizer).eval()


def tiny_llama(tokenizer, layers: int = 2, max_positions: int = 128) -> LlamaForCausalLM:
    """A random-weight Llama with hidden size 32 on ``tokenizer``, initialised under seed 0."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def toy():
    """The default toy checkpoints, built once into $LOGITGUARD_CACHE (shared with the demo test)."""
    return toy_models()


@pytest.fixture(scope="session")
def small_toy(tmp_path_factory):
    """Base and aligned checkpoints of the small recipe (saved with save_pretrained)."""
    return toy_models(SMALL_RECIPE, cache_dir=tmp_path_factory.mktemp("toy-cache"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    """A tiny random Llama saved with save_pretrained, a JSONL training set and a run config using them."""
    root = tmp_path_factory.mktemp("train-cli")
    tiny_llama(tokenizer, max_positions=256).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    with (root / "train.jsonl").open("w") as f:
        for i in range(48):
            words = " ".join(["red", "dog", "cat", "lake"][: 2 + i % 3])
            f.write(json.dumps({"prompt": f"Count the words in: {words}", "completion": str(2 + i % 3)}) + "\n")
    run = {
        "output_dir": str(root / "out"),
        "model": {"name_or_path": str(root / "model")},
        "data": {"train": str(root / "train.jsonl"), "max_length": 64},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "max_steps": 6,
            "per_device_batch_size": 4,
            "learning_rate": 0.01,
            "save_steps": 2,
            "logging_steps": 2,
            "use_cpu": True,
        },
        "str": {"refusals": "templates", "k": 8, "anchors_per_step": 4},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    return root
