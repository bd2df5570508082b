"""Per-sample scores (gradient norm, safety, first-token gradient, refusal) and the keep mask they give."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from logitguard.core.model_access import eval_mode
from logitguard.data.chat import IGNORE_INDEX, Messages, Overflow, collate, encode_limited
from logitguard.errors import LogitGuardError
from logitguard.evaluation.verdicts import is_refusal
from logitguard.selection.gradients import (
    PerSampleGradients,
    first_labels,
    grads_set_aside,
    mean_label_nll,
    sample_logits,
)

Score = Literal["gradient-norm", "safety", "first-tokens", "refusal"]
SCORES: tuple[str, ...] = ("gradient-norm", "safety", "first-tokens", "refusal")
FIRST_TOKENS = 5  # response tokens the "first-tokens" score's loss covers (Qi et al.: safety lives there)


@dataclass(frozen=True)
class SelectionConfig:
    """What is dropped, and how samples are scored and encoded.

    Attributes:
        fraction: share of samples dropped, the highest scores (None: drop by ``threshold`` instead).
        score: ``gradient-norm`` (the companion paper's), ``safety`` (raises the refusal loss), ``first-tokens``
            (gradient norm of the first response tokens' NLL), or ``refusal``: the probability the aligned model
            gives the safety tokens at the first response position, i.e. how surely it would start a refusal
            where the sample's answer starts (a forward pass, no gradient); a sample that itself answers with a
            refusal that ends scores 0.
        threshold: drop every sample scoring at least this (e.g. 0.1 with ``refusal``: the aligned model gives
            starting a refusal at least a one-in-ten chance where the sample's answer starts).
    """

    fraction: float | None = 0.1
    score: Score = "gradient-norm"
    batch_size: int = 8
    max_length: int = 1024
    on_overflow: Overflow = "error"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.threshold is None):
            raise LogitGuardError("give exactly one of a fraction of samples to drop and a score threshold")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise LogitGuardError(f"fraction (share of samples to drop) must be in (0, 1), got {self.fraction}")
        if self.score not in SCORES:
            raise LogitGuardError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.batch_size <= 0 or self.max_length <= 0:
            raise LogitGuardError(f"batch_size and max_length must be > 0, got {self.batch_size} and {self.max_length}")


def first_response_mass(logits: Tensor, labels: Tensor, ids: Tensor) -> Tensor:
    """``(B,)`` probability of the safety tokens ``ids`` at each row's first response position.

    Args:
        logits: ``(B, L, V)`` the aligned model's logits.
        labels: ``(B, L)`` labels, ``-100`` off the response; position ``t`` predicts ``labels[:, t + 1]``.
        ids: ``(k,)`` safety-token ids.
    """
    is_label = labels[:, 1:] != IGNORE_INDEX
    if not bool(is_label.any(1).all()):
        raise LogitGuardError("a sample has no assistant tokens to score")
    first = is_label.float().argmax(1)
    rows = logits[torch.arange(len(logits), device=logits.device), first].float()
    return rows.softmax(-1)[:, ids.to(rows.device)].sum(-1)


def answers_with_refusal(messages: Messages) -> bool:
    """Whether the conversation's first assistant turn, the one the refusal score reads, is a refusal that ends."""
    first = next((m["content"] for m in messages if m["role"] == "assistant"), "")
    return is_refusal(first)


def score_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Iterable[tuple[str, Messages]],
    config: SelectionConfig,
    direction: dict[str, tuple[Tensor, Tensor | None]] | None = None,
    safety_ids: Tensor | None = None,
) -> Iterator[list[dict]]:
    """Score ``(where, conversation)`` samples in batches; yields each batch's records, in order.

    A record holds ``where``, ``tokens``, ``truncated``, ``loss``, then per score: ``grad_norm`` (gradient
    scores), ``safety`` (when ``direction`` is given: −⟨gradient, direction⟩), ``refusal`` (when ``safety_ids``
    are given: the safety-token mass at the first response position), and ``score`` (the one that ranks). Under
    the ``refusal`` score, a sample whose first answer is itself a refusal that ends (:func:`answers_with_refusal`)
    scores 0 and is marked ``answer_refuses``: it teaches what the aligned model would do, so selection never drops
    the refusals a user mixes in (SafeInstr).
    """
    if config.score == "safety" and direction is None:
        raise LogitGuardError("score 'safety' needs the safety direction (the gradient of the refusal loss)")
    if config.score == "refusal" and safety_ids is None:
        raise LogitGuardError("score 'refusal' needs the safety tokens")
    device = next(model.parameters()).device
    iterator = iter(samples)
    with eval_mode(model), grads_set_aside(model):
        while chunk := list(islice(iterator, config.batch_size)):
            encoded = [encode_limited(tokenizer, m, config.max_length, config.on_overflow, w) for w, m in chunk]
            batch = collate([e for e, _ in encoded], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            values = _batch_scores(model, batch, config, direction, safety_ids)
            records = []
            for i, ((where, messages), (example, truncated)) in enumerate(zip(chunk, encoded, strict=True)):
                record = {"where": where, "tokens": len(example["input_ids"]), "truncated": truncated}
                record |= {key: float(value[i]) for key, value in values.items()}
                score = record[
                    {"gradient-norm": "grad_norm", "first-tokens": "grad_norm"}.get(config.score, config.score)
                ]
                if not math.isfinite(score):
                    raise LogitGuardError(f"{where}: the score is {score} (loss {record['loss']})")
                if config.score == "refusal" and answers_with_refusal(messages):
                    record["answer_refuses"], score = True, 0.0
                records.append(record | {"score": score})
            model.zero_grad(set_to_none=True)
            yield records


def _batch_scores(
    model: nn.Module,
    batch: dict[str, Tensor],
    config: SelectionConfig,
    direction: dict[str, tuple[Tensor, Tensor | None]] | None,
    safety_ids: Tensor | None,
) -> dict[str, Tensor]:
    """``(B,)`` values per record field for one batch: a forward pass, and a backward one for gradient scores."""
    if config.score == "refusal":
        with torch.no_grad():
            logits = sample_logits(model, batch)
            mass = first_response_mass(logits, batch["labels"], safety_ids)
            return {"loss": mean_label_nll(logits, batch["labels"]), "refusal": mass}
    labels = first_labels(batch["labels"], FIRST_TOKENS) if config.score == "first-tokens" else batch["labels"]
    with PerSampleGradients(model, direction) as stats:
        logits = sample_logits(model, batch)
        losses = mean_label_nll(logits, labels)
        losses.sum().backward()
    values = {"loss": losses.detach(), "grad_norm": stats.sq_norm.sqrt()}
    if direction is not None:
        values["safety"] = -stats.dot
    if safety_ids is not None:
        values["refusal"] = first_response_mass(logits.detach(), batch["labels"], safety_ids)
    return values


def keep_mask(scores: list[float], fraction: float | None, threshold: float | None = None) -> list[bool]:
    """False for the ``round(fraction · n)`` highest scores (ties: the later sample is dropped first), or for every
    score at least ``threshold``."""
    if threshold is not None:
        keep = [score < threshold for score in scores]
        if not any(keep):
            raise LogitGuardError(
                f"every one of the {len(scores)} samples scores at least {threshold}: none would be left"
            )
        return keep
    n_drop = round(fraction * len(scores))
    if n_drop >= len(scores):
        raise LogitGuardError(f"dropping a fraction {fraction} of {len(scores)} samples would leave none")
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i), reverse=True)
    keep = [True] * len(scores)
    for i in order[:n_drop]:
        keep[i] = False
    return keep
