"""The STR artifacts for any chat model: refusal and benign pairs, safety tokens, anchor references.

Refusals come either from the model itself (``"generate"``: its greedy answers to
harmful prompts that the refusal detector flags, i.e. its own rejection templates)
or from built-in rejection templates teacher-forced after each prompt (``"templates"``:
no generation, works for any model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn
from transformers import PreTrainedTokenizerBase

from logitguard.artifacts.builtin_prompts import BENIGN_PAIRS, HARMFUL_PROMPTS, REJECTION_TEMPLATES
from logitguard.errors import LogitGuardError
from logitguard.evaluation.generation import generate
from logitguard.evaluation.verdicts import is_refusal, judge_response, opens_with_refusal

Source = Literal["generate", "templates"]
SOURCES = ("generate", "templates")
MIN_REFUSALS = 4


def refusal_pairs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: Source,
    prompts: Sequence[str] = HARMFUL_PROMPTS,
    templates: Sequence[str] = REJECTION_TEMPLATES,
    max_new_tokens: int = 48,
) -> list[tuple[str, str]]:
    """(harmful prompt, refusal) pairs from the model's own refusals or from templates."""
    if source == "templates":
        return [(p, templates[i % len(templates)]) for i, p in enumerate(prompts)]
    if source != "generate":
        raise LogitGuardError(f"refusal source must be one of {SOURCES}, got {source!r}")
    answers = generate(model, tokenizer, list(prompts), max_new_tokens, desc="refusals")
    pairs = [(p, a) for p, a in zip(prompts, answers, strict=True) if is_refusal(a)]
    if len(pairs) < MIN_REFUSALS:
        raise LogitGuardError(
            f"the model refused only {len(pairs)} of {len(prompts)} harmful prompts, too few to learn its refusals "
            "from; is it an aligned (instruct) model? Use refusal source 'templates' to teacher-force built-in ones"
        )
    return pairs


def benign_pairs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: Source,
    pairs: Sequence[tuple[str, str]] = BENIGN_PAIRS,
    max_new_tokens: int = 48,
) -> list[tuple[str, str]]:
    """(benign prompt, ordinary answer) pairs: the model's own non-refusing answers, or the built-in ones."""
    if source == "templates":
        return list(pairs)
    prompts = [p for p, _ in pairs]
    answers = generate(model, tokenizer, prompts, max_new_tokens, desc="benign answers")
    kept = [(p, a) for p, a in zip(prompts, answers, strict=True) if a and not opens_with_refusal(a)]
    return kept or list(pairs)


def compliant_pairs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int = 64
) -> list[tuple[str, str]]:
    """(safe prompt, the model's own answer) for every prompt the model answers without a refusal opening: the
    benign anchors of two-sided STR, what fine-tuning must not turn into refusals."""
    answers = generate(model, tokenizer, list(prompts), max_new_tokens, desc="benign anchor answers")
    pairs = [(p, a) for p, a in zip(prompts, answers, strict=True) if a.strip() and judge_response(a) == "compliance"]
    if not pairs:
        raise LogitGuardError(
            f"the model refused or left empty all {len(prompts)} safe look-alike prompts: there is nothing it answers "
            "that two-sided STR could keep"
        )
    return pairs
