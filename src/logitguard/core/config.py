"""STR's settings: :class:`STRConfig`, checked field by field (type and domain) when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from logitguard.core.penalties import Penalty, get_penalty, salient_kl
from logitguard.domains import NON_NEGATIVE, POSITIVE, at_least, check_fields, within
from logitguard.errors import LogitGuardError

Reference = Literal["anchors", "task", "both"]
AnchorPass = Literal["auto", "packed", "separate"]


@dataclass
class STRConfig:
    """Settings of Safety Token Regularization.

    Attributes:
        penalty: ``"kl"`` (KL restricted to the safety tokens) or ``"mse"`` (squared logit deviation).
        weight: λ, the penalty's weight in ``loss = task + λ·STR``.
        reference: ``"anchors"`` (the aligned model's refusals, references cached before training), ``"task"``
            (the task batch itself against the same PEFT model with its adapters disabled: one extra frozen
            forward per step) or ``"both"``.
        anchors_per_step: anchor rows per optimizer step, shared out over ranks and gradient-accumulation
            micro-batches (each step's anchor term is the mean over all of them).
        benign_anchors_per_step: benign anchor rows per optimizer step (two-sided STR; 0: one-sided). They need a
            benign anchor cache and form a term of their own, ``str_benign``, also weighted by λ.
        anchor_every: anchors run on every ``anchor_every``-th optimizer step only (cheaper, weaker).
        anchor_tokens: how many target tokens of each anchor (its refusal, from the first) the penalty covers; None:
            all of them. Fewer also means shorter anchor sequences through the decoder (each is cut after its
            last covered target).
        anchor_pass: how the anchor sequences meet the task rows. ``"packed"``: packed end to end into the task
            rows' padding and as few new rows of the task's length as they fill, in the task rows' own forward pass
            (one forward and one backward carry both; needs right-padded task rows). ``"separate"``: a short
            forward pass of their own. ``"auto"``: packed for a right-padded batch, else separate, decided on
            every batch (``docs/design.md`` has the measurements).
        temperature: softmax temperature of the ``"kl"`` penalty.
        mask_conflicts: leave out task positions the reference would refuse (task reference only).
        rest_bucket: on anchors, compare full-vocabulary log-probabilities of the k tokens plus one bucket
            for all others (:func:`~logitguard.core.penalties.salient_log_probs`) instead of raw logits. It
            needs the log-normaliser at the anchor positions only (a few hundred rows of logits).
        target_bucket: on anchors, also pin the anchor's own next token at each position, in a bucket of its
            own (:func:`~logitguard.core.penalties.with_target_column`), so the penalty covers the answer to its
            end-of-turn token: without it, a refusal that goes on to comply costs nothing once its safety
            tokens are said. One more output row per anchor position.

    The defaults are measured (``docs/design.md``): kl with both buckets, λ=0.3, 8 anchors every step.
    """

    penalty: str = "kl"
    weight: float = field(default=0.3, metadata=within(NON_NEGATIVE))
    reference: Reference = "anchors"
    anchors_per_step: int = field(default=8, metadata=at_least(1))
    benign_anchors_per_step: int = field(default=0, metadata=within(NON_NEGATIVE))
    anchor_every: int = field(default=1, metadata=at_least(1))
    anchor_tokens: int | None = field(default=None, metadata=at_least(1))
    anchor_pass: AnchorPass = "auto"
    temperature: float = field(default=1.0, metadata=within(POSITIVE))
    mask_conflicts: bool = True
    rest_bucket: bool = True
    target_bucket: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        get_penalty(self.penalty)
        if self.benign_anchors_per_step and not self.uses_anchors:
            raise LogitGuardError("benign_anchors_per_step needs reference 'anchors' or 'both'")

    def penalty_fn(self) -> Penalty:
        if self.penalty == "kl":
            return partial(salient_kl, temperature=self.temperature)
        return get_penalty(self.penalty)

    @property
    def uses_anchors(self) -> bool:
        return self.reference in ("anchors", "both")

    @property
    def uses_task(self) -> bool:
        return self.reference in ("task", "both")

    @property
    def two_sided(self) -> bool:
        return self.benign_anchors_per_step > 0
