"""Shared fixtures: tiny models built from the toy corpus, on CPU, in seconds.

The tests build into a cache of their own (``tests/`` under ``$LOGITGUARD_CACHE``), apart from a user's runs, so
nothing a user's killed build left there can change what a test sees.
"""

import json
import os

import pytest
import yaml

from logitguard.models.cache import cache_root

os.environ["LOGITGUARD_CACHE"] = str(cache_root() / "tests")

from logitguard.lab.toy.corpus import build_corpus
from logitguard.lab.toy.model import build_tokenizer, toy_models
from tests.helpers import SMALL_RECIPE, tiny_llama


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


@pytest.fixture(scope="session")
def toy():
    """The default toy checkpoints, built once into $LOGITGUARD_CACHE (shared with the demo test)."""
    return toy_models()


@pytest.fixture(scope="session")
def small_toy():
    """Base and aligned checkpoints of the small recipe (saved with save_pretrained; about 20 s to build, once,
    into $LOGITGUARD_CACHE)."""
    return toy_models(SMALL_RECIPE)


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
            "per_device_train_batch_size": 4,
            "learning_rate": 0.01,
            "save_steps": 2,
            "logging_steps": 2,
            "use_cpu": True,
        },
        "str": {"refusals": "templates", "k": 8, "anchors_per_step": 4},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    return root
