"""Readers for the public data sets the real-model benchmarks use, read by path, never copied.

A data folder (``../shared/data`` beside the repository here) holds, each unchanged from its authors' repository:

* ``safety-tuned-llamas/`` (Bianchi et al., ICLR 2024; CC BY-NC 4.0): ``safety_only_data_Instructions.json``,
  harmful or sensitive requests with safe answers, and ``evaluation/*.json`` safety evaluation sets;
* ``gsm8k/`` (Cobbe et al. 2021; MIT): ``train.jsonl`` and ``test.jsonl``;
* ``self-instruct/`` (Wang et al. 2023; Apache-2.0): human-written benign instructions with answers.

Get them from those repositories (vinid/safety-tuned-llamas, openai/grade-school-math, yizhongw/self-instruct);
every reader names the file it misses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from logitguard.errors import LogitGuardError
from logitguard.io import read_text, text_lines

Pair = tuple[str, str]
HARMFUL_SETS = ("I-MaliciousInstructions", "I-CoNa", "I-Controversial", "I-PhysicalSafetyUnsafe", "Q-Harm")
SAFE_SETS = ("I-PhysicalSafetySafe", "I-Alpaca")


def _file(root: Path, relative: str) -> Path:
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the public data folder: see logitguard.lab.public_data)")
    return path


def _prompt(instruction: str, context: str) -> str:
    return f"{instruction}\n\n{context}" if context.strip() else instruction


def safety_tuning_pairs(root: Path) -> list[Pair]:
    """(request, safe answer) of Safety-Tuned LLaMAs' 2,483 safety-tuning records, in file order."""
    path = _file(root, "safety-tuned-llamas/safety_only_data_Instructions.json")
    records = json.loads(read_text(path))
    return [(_prompt(r["instruction"], r.get("input", "")), r["output"]) for r in records]


def evaluation_prompts(root: Path, name: str) -> list[str]:
    """The prompts of one Safety-Tuned LLaMAs evaluation set (e.g. ``I-MaliciousInstructions``)."""
    path = _file(root, f"safety-tuned-llamas/evaluation/{name}.json")
    value = json.loads(read_text(path))
    if not isinstance(value, dict) or not isinstance(value.get("instructions"), list):
        raise LogitGuardError(f"{path}: expected {{'instructions': [...]}}")
    return [p for p in value["instructions"] if isinstance(p, str) and p.strip()]


def gsm8k(root: Path, split: str) -> list[Pair]:
    """(question, answer) of GSM8K's ``train`` or ``test`` split; answers end with ``#### <number>``."""
    path = _file(root, f"gsm8k/{split}.jsonl")
    return [(r["question"], r["answer"]) for r in (json.loads(line) for _, line in text_lines(path) if line.strip())]


def gsm8k_number(text: str) -> str | None:
    """The number after ``####`` in a GSM8K-style answer (commas dropped), or None without one."""
    match = re.search(r"####\s*\$?(-?[\d,]*\.?\d+)", text)
    return match.group(1).replace(",", "") if match else None


def self_instruct_prompts(root: Path) -> list[str]:
    """Self-Instruct's human-written benign instructions, one prompt per instance (instruction + input)."""
    prompts = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        for _, line in text_lines(_file(root, f"self-instruct/{name}")):
            if line.strip():
                record = json.loads(line)
                prompts += [_prompt(record["instruction"], i.get("input", "")) for i in record["instances"]]
    return prompts
