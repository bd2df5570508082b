"""Shared fixtures: tiny models built from the toy corpus, on CPU, in seconds."""

import pytest
import torch
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
