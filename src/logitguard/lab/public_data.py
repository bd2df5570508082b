"""Readers for the public data sets the real-model benchmarks use, read by path, never copied.

A data folder (``../shared/data`` beside the repository here) holds, each unchanged from its authors' repository:

* ``safety-tuned-llamas/`` (Bianchi et al., ICLR 2024; CC BY-NC 4.0): ``safety_only_data_Instructions.json``,
  harmful or sensitive requests with safe answers, and ``evaluation/*.json`` safety evaluation sets;
* ``gsm8k/`` (Cobbe et al. 2021; MIT): ``train.jsonl`` and ``test.jsonl``;
* ``self-instruct/`` (Wang et al. 2023; Apache-2.0): human-written benign instructions with answers;
* ``harmful-prompts/*.jsonl``: CatQA, HarmfulQA, Do-Not-Answer, HarmBench, StrongREJECT (``prompt`` per line);
* ``over-refusal/*.jsonl``: OR-Bench-Hard-1K, CoCoNot's contrast and preference sets: safe prompts that sound unsafe.

Get them from those repositories (vinid/safety-tuned-llamas, openai/grade-school-math, yizhongw/self-instruct,
declare-lab/red-instruct, allenai/noncompliance, ...; ``../shared/data/README.md`` lists each source); every reader
names the file it misses.

:func:`held_out` splits every prompt set the same way, by a hash of the prompt's text, into what may train or
anchor (70%) and what evaluates (30%), so a prompt never lands on both sides whatever set or order it comes in.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from logitguard.errors import LogitGuardError
from logitguard.io import read_text, text_lines

Pair = tuple[str, str]


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


HARMFUL_PROMPT_SETS = ("catqa_en", "harmfulqa", "donotanswer", "harmbench_text", "strongreject")
LOOKALIKE_SETS = ("orbench_hard_1k", "coconot_contrast")
HELD_OUT_SHARE = 0.3


def held_out(prompt: str) -> bool:
    """Whether ``prompt`` is one that evaluates (30% of every set, by a hash of its normalised text) rather than one
    that may train or anchor."""
    digest = hashlib.sha256(" ".join(prompt.lower().split()).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELD_OUT_SHARE


def prompt_records(root: Path, folder: str, name: str) -> list[dict]:
    """The records of ``folder/name.jsonl`` (``harmful-prompts`` or ``over-refusal``), each with a ``prompt``."""
    path = _file(root, f"{folder}/{name}.jsonl")
    records = []
    for number, line in text_lines(path):
        if line.strip():
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise LogitGuardError(f"{path}:{number}: expected a JSON object with a string 'prompt'")
            records.append(record)
    return records


def split_prompts(root: Path, folder: str, name: str, evaluation: bool) -> list[str]:
    """The prompts of one set on one side of :func:`held_out`, in file order."""
    return [r["prompt"] for r in prompt_records(root, folder, name) if held_out(r["prompt"]) == evaluation]


def lookalike_answers(root: Path) -> list[tuple[str, str]]:
    """(safe prompt that sounds unsafe, a helpful answer) of CoCoNot's preference set, training side only."""
    return [
        (r["prompt"], r["response"])
        for r in prompt_records(root, "over-refusal", "coconot_pref")
        if isinstance(r.get("response"), str) and not held_out(r["prompt"])
    ]


def lookalike_training_prompts(root: Path, n: int = 128, seed: int = 0) -> list[str]:
    """``n`` safe look-alikes of the training side of OR-Bench-Hard-1K, CoCoNot's contrast and preference sets,
    shuffled under ``seed``: the prompts of the benign anchors (two-sided STR)."""
    pool = [p for name in LOOKALIKE_SETS for p in split_prompts(root, "over-refusal", name, False)]
    pool += [p for p, _ in lookalike_answers(root)]
    random.Random(seed).shuffle(pool)
    return pool[:n]
