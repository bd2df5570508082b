"""Evaluate a model on the toy corpus's held-out splits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from logitguard.evaluation.generation import generate
from logitguard.evaluation.metrics import safety_rates
from logitguard.evaluation.verdicts import judge_response
from logitguard.lab.toy.corpus import Example, ToyCorpus

# Harmful prompts get long answers, so that a refusal which goes on to comply is seen (a toy refusal is
# about 12 tokens; the compliant continuation follows it); everything else is judged on a short answer.
HARMFUL_TOKENS = 48
SHORT_TOKENS = 12


def exact_match(outputs: Sequence[str], rows: Sequence[Example]) -> float:
    return sum(o.strip() == e.answer for o, e in zip(outputs, rows, strict=True)) / len(rows) if rows else 0.0


def toy_metrics(model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: ToyCorpus) -> dict[str, float]:
    """Held-out harmful refusal, benign over-refusal, benign skills and task accuracy (greedy decoding).

    ``harmful_refusal`` counts refusals that end; ``harmful_refusal_opening`` every answer that opens with
    a refusal, whatever follows; ``benign_over_refusal`` every benign answer that opens with one.
    """

    def run(rows: Sequence[Example], max_new_tokens: int = SHORT_TOKENS) -> list[str]:
        return generate(model, tokenizer, [e.prompt for e in rows], max_new_tokens, desc=None)

    rates = safety_rates(
        map(judge_response, run(corpus.heldout_harmful, HARMFUL_TOKENS)),
        map(judge_response, run(corpus.heldout_benign)),
    )
    return {
        **rates,
        "benign_skills": exact_match(run(corpus.heldout_skills), corpus.heldout_skills),
        "task_accuracy": exact_match(run(corpus.heldout_task), corpus.heldout_task),
    }


def sample_responses(model: nn.Module, tokenizer: PreTrainedTokenizerBase, corpus: ToyCorpus) -> list[dict]:
    """Greedy responses to a few held-out prompts of each kind, to show what the numbers mean."""
    rows = corpus.heldout_harmful[:3] + corpus.heldout_benign[:1] + corpus.heldout_task[:1]
    responses = generate(model, tokenizer, [e.prompt for e in rows], max_new_tokens=HARMFUL_TOKENS, desc=None)
    return [{"kind": e.kind, "prompt": e.prompt, "response": r} for e, r in zip(rows, responses, strict=True)]
