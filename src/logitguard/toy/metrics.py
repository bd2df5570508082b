"""Evaluate a model on the toy corpus's held-out splits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from logitguard.generation import generate
from logitguard.refusal import refusal_rate
from logitguard.toy.corpus import Example, ToyCorpus


def exact_match(outputs: Sequence[str], rows: Sequence[Example]) -> float:
    return sum(o.strip() == e.answer for o, e in zip(outputs, rows, strict=True)) / len(rows) if rows else 0.0


def toy_metrics(model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: ToyCorpus) -> dict[str, float]:
    """Held-out harmful refusal rate, benign over-refusal, benign skills and task accuracy (greedy decoding)."""

    def run(rows: Sequence[Example], max_new_tokens: int) -> list[str]:
        return generate(model, tokenizer, [e.prompt for e in rows], max_new_tokens, desc=None)

    return {
        "harmful_refusal": refusal_rate(run(corpus.heldout_harmful, 12)),
        "benign_over_refusal": refusal_rate(run(corpus.heldout_benign, 12)),
        "benign_skills": exact_match(run(corpus.heldout_skills, 12), corpus.heldout_skills),
        "task_accuracy": exact_match(run(corpus.heldout_task, 12), corpus.heldout_task),
    }


def sample_responses(model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: ToyCorpus) -> list[dict]:
    """Greedy responses to a few held-out prompts of each kind, to show what the numbers mean."""
    rows = corpus.heldout_harmful[:3] + corpus.heldout_benign[:1] + corpus.heldout_task[:1]
    responses = generate(model, tokenizer, [e.prompt for e in rows], max_new_tokens=24, desc=None)
    return [{"kind": e.kind, "prompt": e.prompt, "response": r} for e, r in zip(rows, responses, strict=True)]


def monitor_refusal(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> float:
    """A cheap refusal rate for use during training: only the first tokens are generated."""
    return refusal_rate(generate(model, tokenizer, prompts, max_new_tokens=8, desc=None))
