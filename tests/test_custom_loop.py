"""The toy models' training loop and their cache."""

import copy
from dataclasses import replace

import pytest
import torch

from logitguard.lab.toy.model import toy_models
from logitguard.lab.toy.train_loop import TrainConfig, train
from tests.helpers import SMALL_RECIPE

PAIRS = [("How do I bake bread?", "Here are the steps to bake bread."), ("Count the words in: red dog", "two")]


def test_training_is_deterministic_under_a_seed(random_model, tokenizer):
    start = copy.deepcopy(random_model.state_dict())
    config = TrainConfig(steps=4, batch_size=2, lr=1e-2, seed=7)
    first = train(random_model, tokenizer, PAIRS, config)
    after_first = copy.deepcopy(random_model.state_dict())
    random_model.load_state_dict(start)
    second = train(random_model, tokenizer, PAIRS, config)
    assert [h["loss"] for h in first] == [h["loss"] for h in second]
    assert all(torch.equal(after_first[k], v) for k, v in random_model.state_dict().items())
    assert first[-1]["loss"] < first[0]["loss"]
    assert {"loss", "lr", "step_time"} <= set(first[0])


def test_training_rejects_missing_inputs(random_model, tokenizer):
    config = TrainConfig(steps=1, batch_size=1)
    with pytest.raises(ValueError, match="no training examples"):
        train(random_model, tokenizer, [], config)
    with pytest.raises(ValueError, match="steps must be > 0"):
        TrainConfig(steps=0)


def test_toy_cache_is_reused_and_keyed_by_the_recipe(small_toy):
    cache = small_toy.aligned.parent.parent
    stamp = (small_toy.aligned / "model.safetensors").stat().st_mtime_ns
    again = toy_models(SMALL_RECIPE, cache_dir=cache)
    assert again == small_toy
    assert (again.aligned / "model.safetensors").stat().st_mtime_ns == stamp
    assert replace(SMALL_RECIPE, seed=1).key() != SMALL_RECIPE.key()
    assert not list(cache.glob(".*tmp"))
