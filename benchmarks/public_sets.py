"""Public prompt sets only the benchmarks read: the safety-tuned-llamas evaluation sets by kind, Self-Instruct's
benign prompts, and the "many phrasings" harmful anchors (readers of :mod:`logitguard.lab.public_data`'s folder)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from logitguard.io import text_lines
from logitguard.lab.public_data import HARMFUL_PROMPT_SETS, _file, _prompt, split_prompts

HARMFUL_SETS = ("I-MaliciousInstructions", "I-CoNa", "I-Controversial", "I-PhysicalSafetyUnsafe", "Q-Harm")
SAFE_SETS = ("I-PhysicalSafetySafe", "I-Alpaca")


def self_instruct_prompts(root: Path) -> list[str]:
    """Self-Instruct's human-written benign instructions, one prompt per instance (instruction + input)."""
    prompts = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        for _, line in text_lines(_file(root, f"self-instruct/{name}")):
            if line.strip():
                record = json.loads(line)
                prompts += [_prompt(record["instruction"], i.get("input", "")) for i in record["instances"]]
    return prompts


def harmful_training_prompts(root: Path, n: int = 256, seed: int = 0) -> list[str]:
    """``n`` harmful prompts of the training side of the five public harmful sets, shuffled under ``seed``: the
    "many phrasings" anchors."""
    pool = [p for name in HARMFUL_PROMPT_SETS for p in split_prompts(root, "harmful-prompts", name, False)]
    random.Random(seed).shuffle(pool)
    return pool[:n]
