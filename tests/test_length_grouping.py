"""Length-grouped batches: every example once per epoch, little padding, batches in random order, and
``finetune`` trains on exactly those batches."""

import itertools
import random

import pytest

from logitguard.data.chat import length_grouped_order
from logitguard.errors import LogitGuardError
from logitguard.lab import finetune as experiment
from logitguard.lab.finetune import FinetuneConfig, finetune
from logitguard.settings import LoraSection
from tests.helpers import tiny_llama


def padded_tokens(order: list[int], lengths: list[int], batch_size: int) -> int:
    starts = range(0, len(order), batch_size)
    return sum(batch_size * max(lengths[i] for i in order[s : s + batch_size]) for s in starts)


def test_batches_pad_little_cover_each_epoch_and_come_in_random_order():
    lengths = [random.Random(i).choice([20, 60, 150, 250]) + i % 7 for i in range(203)]
    batch, per_epoch = 8, 203 // 8
    order = length_grouped_order(lengths, batch, 3 * per_epoch, seed=0)
    assert len(order) == 3 * per_epoch * batch
    for epoch in range(3):
        drawn = order[epoch * per_epoch * batch : (epoch + 1) * per_epoch * batch]
        assert len(set(drawn)) == len(drawn) == 200, "an epoch draws 200 different examples (3 wait for the next)"
    shuffled = random.Random(0).sample(range(203), 200)
    assert padded_tokens(order[:200], lengths, batch) < 0.75 * padded_tokens(shuffled, lengths, batch)
    widest = [max(lengths[i] for i in order[s : s + batch]) for s in range(0, 200, batch)]
    rising = sum(a <= b for a, b in itertools.pairwise(widest)) / (len(widest) - 1)
    assert rising < 0.75, "batches should come in random order, not in a window's sorted run"
    assert length_grouped_order(lengths, batch, 10, seed=0) == order[:80]
    assert length_grouped_order(lengths, batch, 10, seed=1) != order[:80]


def test_fewer_examples_than_a_batch_is_an_error():
    with pytest.raises(LogitGuardError, match="at least one full batch"):
        length_grouped_order([5, 6, 7], batch_size=4, n_batches=1, seed=0)


class TinySetting:
    """A random tiny Llama as the 'aligned' model, judged by nothing."""

    monitor_tokens = 4

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.monitor_prompts: list[str] = []

    def load_aligned(self):
        return tiny_llama(self.tokenizer, max_positions=256)

    def evaluate(self, model):
        return {}

    def samples(self, model):
        return []


def test_finetune_trains_on_the_length_grouped_batches(tokenizer, tmp_path, monkeypatch):
    examples = [(f"Count the words: {' '.join(['red'] * (1 + i % 9))}", "dog " * (1 + 3 * (i % 5))) for i in range(40)]
    config = FinetuneConfig(steps=6, batch_size=4, seed=3, monitor_every=0, length_grouped=True, lora=LoraSection(r=2))
    seen = []
    collate = experiment.collate
    monkeypatch.setattr(experiment, "collate", lambda rows, pad: seen.append(rows) or collate(rows, pad))
    finetune(TinySetting(tokenizer), config, examples, tmp_path, progress=False)
    encoded = [experiment.encode_chat(tokenizer, p, r) for p, r in examples]
    order = length_grouped_order([len(e["input_ids"]) for e in encoded], 4, 6, seed=3)
    assert [[r["input_ids"] for r in rows] for rows in seen] == [
        [encoded[i]["input_ids"] for i in order[s : s + 4]] for s in range(0, 24, 4)
    ]
