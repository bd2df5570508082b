"""Per-sample scores (gradient norm, safety, first-token gradient, refusal, refusal opening) and the keep mask."""

from __future__ import annotations

import math
import random
import statistics
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
    Gradient,
    PerSampleGradients,
    decoder_layers,
    first_labels,
    gradient_entry,
    grads_set_aside,
    mean_label_nll,
    sample_logits,
    scored_linears,
)

Score = Literal["gradient-norm", "safety", "first-tokens", "refusal", "refusal-opening"]
SCORES: tuple[str, ...] = ("gradient-norm", "safety", "first-tokens", "refusal", "refusal-opening")
REFUSAL_SCORES = ("refusal", "refusal-opening")  # forward-only scores under which a refusing answer scores 0
READS_REFUSALS = ("safety", "refusal-opening")  # scores that need the aligned model's refusals (anchors or pairs)
FIRST_TOKENS = 5  # response tokens the "first-tokens" score's loss covers (Qi et al.: safety lives there)
SCORE_FIELDS = {"gradient-norm": "grad_norm", "first-tokens": "grad_norm", "refusal-opening": "refusal_opening"}
OPENING_TOKENS = 3  # tokens of the aligned model's refusal openings the "refusal-opening" score reads ("I'm sorry")


Rule = Literal["drop-top", "moderate", "lowest", "highest", "random"]
RULES: tuple[str, ...] = ("drop-top", "moderate", "lowest", "highest", "random")
KEEPS = ("moderate", "lowest", "highest", "random")  # rules that keep a share ``keep`` of the samples


@dataclass(frozen=True)
class SelectionConfig:
    """Which samples are kept, and how they are scored and encoded.

    Attributes:
        fraction: ``drop-top``: share of samples dropped, the highest scores (None: drop by ``threshold``).
        score: ``gradient-norm`` (‖∇ loss‖ at the model about to be trained), ``safety`` (raises the refusal loss),
            ``first-tokens`` (gradient norm of the first response tokens' NLL), or ``refusal``: the probability the
            aligned model gives the safety tokens at the first response position, i.e. how surely it would start a
            refusal where the sample's answer starts (a forward pass, no gradient); a sample that itself answers
            with a refusal that ends scores 0. ``refusal-opening``: the probability the aligned model gives its own
            refusal openings (the first ``OPENING_TOKENS`` tokens of the anchors' refusals, e.g. "I'm sorry") right
            after the sample's prompt, summed over the distinct openings; a refusing answer scores 0 here too.
        threshold: ``drop-top``: drop every sample scoring at least this (e.g. 0.1 with ``refusal-opening``).
        rule: ``drop-top`` (drop the highest ``fraction``, or every score at least ``threshold``: with
            ``gradient-norm`` the High-Gi tail), ``moderate`` (Moderate-Gi, Bach et al. 2026: the loss band, then
            keep the ``keep`` share whose scores lie closest to their median: both tails go), ``lowest`` /
            ``highest`` (the loss band, then keep the ``keep`` share of lowest / highest scores: Low-Gi, High-Gi),
            ``random`` (keep a ``keep`` share drawn under ``seed``, no scores: the paper's control).
        keep: the share kept by ``moderate``, ``lowest``, ``highest`` and ``random`` (ρ; the paper's 0.2).
        loss_band: before ranking, drop the samples whose loss lies outside mean ± ``loss_band`` standard deviations
            (the paper's pre-filter, about the outer 16% on each side at 1.0); None: no band.
        gradient: the parameters a gradient score covers (:func:`~logitguard.selection.gradients.scored_linears`):
            ``dense`` (under LoRA, the weights the adapters adapt, as full fine-tuning sees them) or ``trainable``
            (the adapters themselves). The ``safety`` score always takes the trainable ones.
        last_layers: score only the last N decoder layers' weights: a forward pass and a short backward (a proxy of
            the full norm: ``benchmarks/selection_proxy.py`` measures how well it ranks).
        seed: the draw of ``random``.
    """

    fraction: float | None = 0.1
    score: Score = "gradient-norm"
    batch_size: int = 8
    max_length: int = 1024
    on_overflow: Overflow = "error"
    threshold: float | None = None
    rule: Rule = "drop-top"
    keep: float | None = None
    loss_band: float | None = 1.0
    gradient: Gradient = "dense"
    last_layers: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise LogitGuardError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.rule == "drop-top" and (self.fraction is None) == (self.threshold is None):
            raise LogitGuardError("give exactly one of a fraction of samples to drop and a score threshold")
        if self.rule == "drop-top" and self.keep is not None:
            raise LogitGuardError("keep is the share the other rules keep; drop-top drops a fraction or a threshold")
        if self.rule in KEEPS and (self.keep is None or not 0 < self.keep < 1):
            raise LogitGuardError(
                f"rule {self.rule!r} needs keep, the share of samples kept, in (0, 1); got {self.keep}"
            )
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise LogitGuardError(f"fraction (share of samples to drop) must be in (0, 1), got {self.fraction}")
        if self.score not in SCORES:
            raise LogitGuardError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.batch_size <= 0 or self.max_length <= 0:
            raise LogitGuardError(f"batch_size and max_length must be > 0, got {self.batch_size} and {self.max_length}")
        if self.loss_band is not None and not self.loss_band > 0:
            raise LogitGuardError(f"loss_band must be > 0 (standard deviations), got {self.loss_band}")
        if self.last_layers is not None and self.last_layers < 1:
            raise LogitGuardError(f"last_layers must be >= 1, got {self.last_layers}")
        if self.gradient not in ("dense", "trainable"):
            raise LogitGuardError(f"gradient must be 'dense' or 'trainable', got {self.gradient!r}")

    @property
    def scores_needed(self) -> bool:
        """Whether the rule reads scores (``random`` keeps its draw without scoring anything)."""
        return self.rule != "random"

    def describe(self) -> str:
        """What the rule keeps, in words (for logs and tables)."""
        if self.rule == "drop-top":
            what = f"the {self.fraction:.0%} highest" if self.fraction is not None else f"every {self.threshold:g}+"
            return f"drops {what} {self.score} scores"
        if self.rule == "random":
            return f"keeps {self.keep:.0%} at random (seed {self.seed})"
        where = {"moderate": "closest to their median", "lowest": "lowest", "highest": "highest"}[self.rule]
        band = f", within a ±{self.loss_band:g}σ loss band" if self.loss_band is not None else ""
        return f"keeps the {self.keep:.0%} {self.score} scores {where}{band}"


def prompt_lengths(labels: Tensor) -> Tensor:
    """``(B,)`` tokens before each row's first response token (``labels`` ``(B, L)``, ``-100`` off the response)."""
    is_label = labels[:, 1:] != IGNORE_INDEX
    if not bool(is_label.any(1).all()):
        raise LogitGuardError("a sample has no assistant tokens to score")
    return is_label.float().argmax(1) + 1


def first_response_mass(logits: Tensor, labels: Tensor, ids: Tensor) -> Tensor:
    """``(B,)`` probability of the safety tokens ``ids`` at each row's first response position.

    Args:
        logits: ``(B, L, V)`` the aligned model's logits.
        labels: ``(B, L)`` labels, ``-100`` off the response; position ``t`` predicts ``labels[:, t + 1]``.
        ids: ``(k,)`` safety-token ids.
    """
    first = prompt_lengths(labels) - 1
    rows = logits[torch.arange(len(logits), device=logits.device), first].float()
    return rows.softmax(-1)[:, ids.to(rows.device)].sum(-1)


def refusal_openings(input_ids: Tensor, labels: Tensor, length: int = OPENING_TOKENS) -> Tensor:
    """``(O, length)`` the distinct first ``length`` response tokens of refusals, the most frequent first.

    Args:
        input_ids: ``(N, L)`` teacher-forced refusals.
        labels: ``(N, L)`` their labels, ``-100`` off the refusal.
    """
    counts: dict[tuple[int, ...], int] = {}
    for row, row_labels, start in zip(input_ids, labels, prompt_lengths(labels).tolist(), strict=True):
        if bool((row_labels[start : start + length] != IGNORE_INDEX).sum() == length):
            opening = tuple(row[start : start + length].tolist())
            counts[opening] = counts.get(opening, 0) + 1
    if not counts:
        raise LogitGuardError(f"no refusal has {length} tokens to take its opening from")
    return torch.tensor(sorted(counts, key=lambda o: (-counts[o], o)))


def with_opening(input_ids: Tensor, lengths: Tensor, opening: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's first ``lengths[b]`` tokens followed by ``opening``, right-padded: ``(B, T)`` ids and mask.

    Args:
        input_ids: ``(B, L)`` the samples.
        lengths: ``(B,)`` prompt lengths (:func:`prompt_lengths`).
        opening: ``(m,)`` the tokens to append.
    """
    total = int(lengths.max()) + len(opening)
    position = torch.arange(total, device=input_ids.device)[None]  # (1, T)
    start = lengths[:, None]  # (B, 1)
    width = min(total, input_ids.shape[1])
    prompt = input_ids.new_zeros(len(input_ids), total)
    prompt[:, :width] = input_ids[:, :width]
    in_opening = (position >= start) & (position < start + len(opening))
    appended = opening.to(input_ids.device)[(position - start).clamp(0, len(opening) - 1)]
    ids = torch.where(position < start, prompt, torch.where(in_opening, appended, 0))
    return ids, (position < start + len(opening)).long()


def opening_log_probability(logits: Tensor, lengths: Tensor, opening: Tensor) -> Tensor:
    """``(B,)`` log-probability of ``opening`` right after each row's prompt.

    Args:
        logits: ``(B, T, V)`` logits over :func:`with_opening`'s ids; position ``t`` predicts token ``t + 1``.
        lengths: ``(B,)`` prompt lengths.
        opening: ``(m,)`` the opening's tokens.
    """
    positions = lengths[:, None] - 1 + torch.arange(len(opening), device=logits.device)  # (B, m)
    rows = logits[torch.arange(len(logits), device=logits.device)[:, None], positions].float()  # (B, m, V)
    targets = opening.to(logits.device).expand(len(logits), -1)[..., None]  # (B, m, 1)
    return rows.log_softmax(-1).gather(-1, targets).squeeze(-1).sum(-1)


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
    openings: Tensor | None = None,
) -> Iterator[list[dict]]:
    """Score ``(where, conversation)`` samples in batches; yields each batch's records, in order.

    A record holds ``where``, ``tokens``, ``truncated``, then per score: ``loss`` (all but ``refusal-opening``),
    ``grad_norm`` (gradient scores), ``safety`` (when ``direction`` is given: −⟨gradient, direction⟩), ``refusal``
    (when ``safety_ids`` are given: the safety-token mass at the first response position), ``refusal_opening``
    (the probability of the ``(O, m)`` ``openings`` after the prompt), and ``score`` (the one that ranks). Under a
    refusal score, a sample whose first answer is itself a refusal that ends (:func:`answers_with_refusal`) scores 0
    and is marked ``answer_refuses``: it teaches what the aligned model would do, so selection never drops the
    refusals a user mixes in (SafeInstr).
    """
    if config.score == "safety" and direction is None:
        raise LogitGuardError("score 'safety' needs the safety direction (the gradient of the refusal loss)")
    if config.score == "refusal" and safety_ids is None:
        raise LogitGuardError("score 'refusal' needs the safety tokens")
    if config.score == "refusal-opening" and openings is None:
        raise LogitGuardError("score 'refusal-opening' needs the aligned model's refusal openings")
    device = next(model.parameters()).device
    iterator = iter(samples)
    with eval_mode(model), grads_set_aside(model):
        while chunk := list(islice(iterator, config.batch_size)):
            encoded = [encode_limited(tokenizer, m, config.max_length, config.on_overflow, w) for w, m in chunk]
            batch = collate([e for e, _ in encoded], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            values = _batch_scores(model, batch, config, direction, safety_ids, openings)
            records = []
            for i, ((where, messages), (example, truncated)) in enumerate(zip(chunk, encoded, strict=True)):
                record = {"where": where, "tokens": len(example["input_ids"]), "truncated": truncated}
                record |= {key: float(value[i]) for key, value in values.items()}
                score = record[SCORE_FIELDS.get(config.score, config.score)]
                if not math.isfinite(score):
                    raise LogitGuardError(f"{where}: the {config.score} score is {score} ({record})")
                if config.score in REFUSAL_SCORES and answers_with_refusal(messages):
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
    openings: Tensor | None,
) -> dict[str, Tensor]:
    """``(B,)`` values per record field for one batch: a forward pass (one per opening for ``refusal-opening``),
    and a backward one for gradient scores."""
    if config.score == "refusal-opening":
        lengths = prompt_lengths(batch["labels"])
        log_probs = []
        with torch.no_grad():
            for opening in openings:
                ids, mask = with_opening(batch["input_ids"], lengths, opening)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                log_probs.append(opening_log_probability(logits, lengths, opening))
        return {"refusal_opening": torch.stack(log_probs).exp().sum(0)}
    if config.score == "refusal":
        with torch.no_grad():
            logits = sample_logits(model, batch)
            mass = first_response_mass(logits, batch["labels"], safety_ids)
            return {"loss": mean_label_nll(logits, batch["labels"]), "refusal": mass}
    labels = first_labels(batch["labels"], FIRST_TOKENS) if config.score == "first-tokens" else batch["labels"]
    gradient = "trainable" if direction is not None else config.gradient
    layers = scored_linears(model, gradient, config.last_layers)
    first = decoder_layers(model) - config.last_layers if config.last_layers else 0
    with gradient_entry(model, first), PerSampleGradients(model, direction, layers, gradient == "dense") as stats:
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


def loss_band_mask(losses: list[float], band: float | None) -> list[bool]:
    """True for the losses inside mean ± ``band`` standard deviations (all of them when ``band`` is None)."""
    if band is None or len(losses) < 2:
        return [True] * len(losses)
    mean, spread = statistics.fmean(losses), statistics.pstdev(losses)
    return [abs(loss - mean) <= band * spread for loss in losses]


def keep_share(
    scores: list[float], losses: list[float] | None, rule: Rule, keep: float, band: float | None, seed: int = 0
) -> list[bool]:
    """True for the ``round(keep · n)`` samples a keep-rule keeps (at least one).

    ``moderate``: among the samples inside the loss band, those whose score lies closest to the band's median score;
    ``lowest``/``highest``: the band's lowest/highest scores; ``random``: a draw under ``seed`` (scores unread). Ties
    go to the earlier sample. Fewer samples inside the band than asked for: all of them are kept.
    """
    n = len(scores)
    wanted = max(1, round(keep * n))
    if rule == "random":
        chosen = set(random.Random(seed).sample(range(n), wanted))
        return [i in chosen for i in range(n)]
    inside = [i for i, ok in enumerate(loss_band_mask(losses or [0.0] * n, band)) if ok]
    if not inside:
        raise LogitGuardError(f"no sample lies inside the ±{band:g}σ loss band")
    if rule == "moderate":
        median = statistics.median(scores[i] for i in inside)
        order = sorted(inside, key=lambda i: (abs(scores[i] - median), i))
    else:
        order = sorted(inside, key=lambda i: (scores[i] if rule == "lowest" else -scores[i], i))
    chosen = set(order[:wanted])
    return [i in chosen for i in range(n)]


def selection_mask(config: SelectionConfig, records: list[dict]) -> list[bool]:
    """The keep mask of ``config``'s rule over the scored ``records`` (each with ``score`` and, for the loss band,
    ``loss``)."""
    scores = [r["score"] for r in records]
    if config.rule == "drop-top":
        return keep_mask(scores, config.fraction, config.threshold)
    band = config.loss_band if config.rule != "random" else None
    if band is not None and any("loss" not in r for r in records):
        raise LogitGuardError(f"the loss band needs each sample's loss, which the {config.score} score does not give")
    losses = [r.get("loss", 0.0) for r in records]
    return keep_share(scores, losses, config.rule, config.keep, band, config.seed)
