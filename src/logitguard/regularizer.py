"""Safety Token Regularization for one training step: the settings and the one objective every host calls.

:class:`STRObjective` is the single implementation of an STR step. A host (the custom loop of
:mod:`logitguard.custom_loop`, :class:`~logitguard.str_trainer.STRTrainerMixin` in a ``transformers.Trainer``,
or an integration) does three things around it:

1. ``rows = objective.anchor_rows(step, part, parts)``: its share of the step's anchor draw;
2. ``inputs = objective.forward_inputs(batch, rows)``: the rows its own forward pass runs (the anchor rows join
   the task rows, labels ``-100``, when they share the pass), then its forward pass, keeping the final hidden
   states;
3. ``sums = objective.penalties(model, hidden, batch, rows, inputs.shared)``: the STR terms as sums over
   positions with their counts; the host divides them by its own counts (per batch, or per optimizer step
   across ranks and micro-batches) and adds ``config.weight`` times them to its task loss.

The safety-token logits are always ``hidden @ W_out[ids].T``: no full-vocabulary logits beyond the
log-normaliser at anchor positions. Two references:

* ``"anchors"``: harmful prompts with the aligned model's refusals, references cached before training
  (:mod:`logitguard.anchors`);
* ``"task"``: the task batch itself, the reference being the same PEFT model with its adapters disabled.
  Positions where that reference would rather emit a safety token than the data's own next token are
  *conflicts* (the aligned model refuses what the task asks for); they are left out, since pinning them
  would block the task.

Shapes: ``B`` task rows, ``A`` anchor rows, ``L`` sequence length, ``d`` hidden size, ``k`` safety tokens,
``n`` selected positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logitguard.anchors import AnchorCache, next_tokens
from logitguard.data import IGNORE_INDEX
from logitguard.discovery import SafetyTokens
from logitguard.errors import LogitGuardError
from logitguard.model_parts import final_hidden_states, output_rows, reference_mode
from logitguard.penalties import (
    Penalty,
    get_penalty,
    salient_kl,
    salient_log_probs,
    salient_logits,
    with_target_column,
)

Reference = Literal["anchors", "task", "both"]


@dataclass
class STRConfig:
    """Settings of Safety Token Regularization.

    Attributes:
        penalty: ``"kl"`` (KL restricted to the safety tokens) or ``"mse"`` (squared logit deviation).
        weight: λ, the penalty's weight in ``loss = task + λ·STR``.
        reference: ``"anchors"``, ``"task"`` or ``"both"``.
        anchors_per_step: anchor rows per optimizer step, shared out over ranks and gradient-accumulation
            micro-batches (each step's anchor term is the mean over all of them).
        anchor_every: anchors run on every ``anchor_every``-th optimizer step only (cheaper, weaker).
        anchor_pass: ``"shared"`` puts anchor rows in the task batch's forward pass (padded to its length),
            ``"separate"`` runs them in a short forward of their own; ``"auto"`` shares the pass unless the
            task rows are more than twice as long as the anchors (padding would then cost more than the
            anchors themselves). At tiny scale a second forward costs nearly a whole step; at real
            sequence lengths padding 8 anchors to 2k tokens would.
        temperature: softmax temperature of the ``"kl"`` penalty.
        mask_conflicts: leave out task positions the reference would refuse (task reference only).
        rest_bucket: on anchors, compare full-vocabulary log-probabilities of the k tokens plus one bucket
            for all others (:func:`~logitguard.penalties.salient_log_probs`) instead of raw logits. It
            needs the log-normaliser at the anchor positions only (a few hundred rows of logits).
        target_bucket: on anchors, also pin the refusal's own next token at each position, in a bucket of its
            own (:func:`~logitguard.penalties.with_target_column`), so the penalty covers the refusal to its
            end-of-turn token: without it, a refusal that goes on to comply costs nothing once its safety
            tokens are said. One more output row per anchor position.

    The defaults are measured (``docs/design.md``): kl with both buckets, λ=0.3, 8 anchors every step.
    """

    penalty: str = "kl"
    weight: float = 0.3
    reference: Reference = "anchors"
    anchors_per_step: int = 8
    anchor_every: int = 1
    anchor_pass: Literal["auto", "shared", "separate"] = "auto"
    temperature: float = 1.0
    mask_conflicts: bool = True
    rest_bucket: bool = True
    target_bucket: bool = True

    def __post_init__(self) -> None:
        get_penalty(self.penalty)
        if not self.weight >= 0:
            raise LogitGuardError(f"STR weight (lambda) must be >= 0, got {self.weight}")
        if self.reference not in ("anchors", "task", "both"):
            raise LogitGuardError(f"reference must be 'anchors', 'task' or 'both', got {self.reference!r}")
        for name in ("anchors_per_step", "anchor_every"):
            if getattr(self, name) <= 0:
                raise LogitGuardError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.anchor_pass not in ("auto", "shared", "separate"):
            raise LogitGuardError(f"anchor_pass must be 'auto', 'shared' or 'separate', got {self.anchor_pass!r}")
        if self.temperature <= 0:
            raise LogitGuardError(f"temperature must be > 0, got {self.temperature}")

    def penalty_fn(self) -> Penalty:
        if self.penalty == "kl":
            return partial(salient_kl, temperature=self.temperature)
        return get_penalty(self.penalty)

    def shares_anchor_pass(self, task_length: int, anchor_length: int) -> bool:
        """Whether anchor rows join the task rows' forward pass (see ``anchor_pass``)."""
        if self.anchor_pass == "auto":
            return task_length <= 2 * anchor_length
        return self.anchor_pass == "shared"

    @property
    def uses_anchors(self) -> bool:
        return self.reference in ("anchors", "both")

    @property
    def uses_task(self) -> bool:
        return self.reference in ("task", "both")


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass(frozen=True)
class AnchorSchedule:
    """Which anchor rows each optimizer step uses: seeded shuffles of the cache, ``per_step`` rows at a time.

    The draw is a pure function of the step, so a resumed run and every rank of a
    distributed run agree on it without saving or communicating any state; each
    rank and gradient-accumulation micro-batch then takes its own :func:`shard`.
    """

    n_rows: int
    per_step: int
    every: int = 1
    seed: int = 0

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) has anchor rows."""
        return step % self.every == 0

    def rows(self, step: int) -> Tensor:
        """``(per_step,)`` row indices of the global draw for an active step."""
        positions = torch.arange(step // self.every * self.per_step, (step // self.every + 1) * self.per_step)
        epochs, offsets = positions // self.n_rows, positions % self.n_rows
        return torch.stack(
            [_permutation(self.n_rows, self.seed, int(e))[o] for e, o in zip(epochs, offsets, strict=True)]
        )


def shard(rows: Tensor, index: int, count: int) -> Tensor:
    """The ``index``-th of ``count`` near-equal contiguous parts of ``rows``."""
    return torch.tensor_split(rows, count)[index]


@dataclass
class AnchorRows:
    """One host's share of a step's anchor draw.

    Attributes:
        tensors: the :meth:`AnchorCache.rows` of the share (``(A, L)`` and ``(A, L, k)`` tensors).
        step_positions: target positions in the whole step's draw (all shares together), the anchor term's
            denominator when a step is split over ranks or micro-batches.
    """

    tensors: dict[str, Tensor]
    step_positions: int

    def to(self, device: torch.device) -> AnchorRows:
        return AnchorRows({key: value.to(device) for key, value in self.tensors.items()}, self.step_positions)


@dataclass
class ForwardInputs:
    """The rows a host's forward pass runs: ``(B [+ A], L')`` tensors, task rows first."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor  # -100 on anchor rows: the host's task loss and token counts never see them
    shared: bool  # whether the anchor rows are in these tensors (else they get a pass of their own)


@dataclass
class STRSums:
    """STR terms as sums over positions, with their counts; each host normalises them its own way.

    Attributes:
        anchor: scalar, the penalty summed over this share's anchor target positions (0 without anchors).
        anchor_positions: scalar, how many there were.
        task: scalar, the task-reference penalty summed over this batch's label positions (conflicts count 0).
        task_positions: scalar, label positions in this batch.
        conflict_fraction: scalar, share of label positions left out as refusal conflicts.
    """

    anchor: Tensor
    anchor_positions: Tensor
    task: Tensor
    task_positions: Tensor
    conflict_fraction: Tensor


class STRObjective:
    """One STR step, the same in every host.

    Args:
        config: STR settings.
        safety_tokens: the artifact of discovery (its ids are the k tokens).
        anchors: the anchor cache; required when ``config.uses_anchors``.
        seed: seed of the anchor schedule (the run's seed: resumed runs and all ranks draw the same rows).
    """

    def __init__(
        self,
        config: STRConfig,
        safety_tokens: SafetyTokens,
        anchors: AnchorCache | None = None,
        seed: int = 0,
    ) -> None:
        if config.uses_anchors and anchors is None:
            raise LogitGuardError(f"STR reference {config.reference!r} needs an anchor cache")
        self.config = config
        self.ids = safety_tokens.id_tensor()
        self.anchors = anchors if config.uses_anchors else None
        self.schedule = (
            AnchorSchedule(len(anchors), config.anchors_per_step, config.anchor_every, seed)
            if self.anchors is not None
            else None
        )

    def anchor_rows(self, step: int, part: int = 0, parts: int = 1) -> AnchorRows | None:
        """Part ``part`` of ``parts`` (ranks × micro-batches) of optimizer step ``step``'s draw; None without one."""
        if self.schedule is None or not self.schedule.active(step):
            return None
        draw = self.schedule.rows(step)
        if len(draw) < parts:
            raise LogitGuardError(
                f"anchors_per_step ({len(draw)}) must be at least processes × gradient-accumulation steps ({parts}), "
                "so every micro-batch gets an anchor row"
            )
        positions = int(self.anchors.target_mask[draw].sum())
        return AnchorRows(self.anchors.rows(shard(draw, part, parts)), max(positions, 1))

    def forward_inputs(self, batch: dict[str, Tensor], rows: AnchorRows | None) -> ForwardInputs:
        """The task batch ``(B, L)``, followed by the anchor rows when they share its forward pass."""
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if rows is None or not self.config.shares_anchor_pass(input_ids.shape[1], rows.tensors["input_ids"].shape[1]):
            return ForwardInputs(input_ids, attention_mask, labels, shared=False)
        anchor_ids, anchor_mask = rows.tensors["input_ids"], rows.tensors["attention_mask"]
        length = max(input_ids.shape[1], anchor_ids.shape[1])
        return ForwardInputs(
            torch.cat([_pad_to(input_ids, length, 0), _pad_to(anchor_ids.to(input_ids.device), length, 0)]),
            torch.cat([_pad_to(attention_mask, length, 0), _pad_to(anchor_mask.to(input_ids.device), length, 0)]),
            torch.cat(
                [
                    _pad_to(labels, length, IGNORE_INDEX),
                    torch.full((len(anchor_ids), length), IGNORE_INDEX, dtype=labels.dtype, device=labels.device),
                ]
            ),
            shared=True,
        )

    def penalties(
        self,
        model: nn.Module,
        hidden: Tensor,
        batch: dict[str, Tensor],
        rows: AnchorRows | None,
        shared: bool,
    ) -> STRSums:
        """The STR sums of one forward pass.

        Args:
            model: the model being trained (a PEFT model for the task reference; not a DDP/FSDP wrapper).
            hidden: ``(B [+ A], L', d)`` final hidden states of the host's forward pass over ``forward_inputs``.
            batch: the task rows ``input_ids``/``attention_mask``/``labels`` ``(B, L)``.
            rows: this share's anchor rows (from :meth:`anchor_rows`), or None.
            shared: whether the anchor rows were in the host's pass (``ForwardInputs.shared``).
        """
        device = hidden.device
        ids = self.ids.to(device)
        zero = torch.zeros((), device=device)
        anchor = anchor_positions = task = task_positions = conflicts = zero
        n_task = batch["input_ids"].shape[0]
        if rows is not None:
            tensors = rows.to(device).tensors
            anchor_hidden = (
                hidden[n_task:]
                if shared
                else final_hidden_states(model, tensors["input_ids"], tensors["attention_mask"])
            )
            anchor = anchor_penalty(model, anchor_hidden, tensors, ids, self.config)
            anchor_positions = tensors["target_mask"].sum()
        if self.config.uses_task:
            labels = batch["labels"]
            positions = labels[:, 1:] != IGNORE_INDEX
            h_sel = hidden[:n_task, : labels.shape[1] - 1][positions]
            task, conflicts = task_penalty(model, batch, h_sel, positions, ids, self.config)
            task_positions = positions.sum()
        return STRSums(anchor, anchor_positions, task, task_positions, conflicts)


def _pad_to(t: Tensor, length: int, value: float) -> Tensor:
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]), value=value)


def refusal_conflicts(ref_salient: Tensor, ref_label_logit: Tensor, labels: Tensor, ids: Tensor) -> Tensor:
    """``(n,)`` True where the reference prefers some safety token over the data's next token.

    Args:
        ref_salient: ``(n, k)`` reference safety-token logits at the selected positions.
        ref_label_logit: ``(n,)`` reference logit of the label token there.
        labels: ``(n,)`` the label token ids.
        ids: ``(k,)`` safety-token ids; a label that is itself a safety token is no conflict.
    """
    is_safety_label = (labels.unsqueeze(-1) == ids.to(labels.device)).any(-1)
    return (ref_salient.max(-1).values > ref_label_logit) & ~is_safety_label


def anchor_penalty(
    model: nn.Module, hidden: Tensor, anchors: dict[str, Tensor], ids: Tensor, config: STRConfig
) -> Tensor:
    """STR on anchor rows, summed over their target positions: the model's bucket distribution against the cache.

    Args:
        model: the model being trained (its output embedding gives ``W_out[ids]``).
        hidden: ``(A, L', d)`` final hidden states of the anchor rows, ``L' >= L``.
        anchors: :meth:`~logitguard.anchors.AnchorCache.rows` (``input_ids``, ``target_mask``, ``ref_logsumexp``,
            ``ref_target_logits`` ``(A, L)``, ``ref_logits`` ``(A, L, k)``), on ``hidden``'s device.
        ids: ``(k,)`` safety-token ids.
    """
    target = anchors["target_mask"]
    h_target = hidden[:, : target.shape[1]][target]
    w_ids, b_ids = output_rows(model, ids)
    current, reference = salient_logits(h_target, w_ids, b_ids), anchors["ref_logits"][target]
    if config.target_bucket:
        next_ids = next_tokens(anchors["input_ids"])[target]
        w_next, b_next = output_rows(model, next_ids)
        current_next = (h_target * w_next.to(h_target.dtype)).sum(-1) + (0 if b_next is None else b_next)
        is_salient = (next_ids.unsqueeze(-1) == ids).any(-1)
        current = with_target_column(current, current_next, is_salient)
        reference = with_target_column(reference, anchors["ref_target_logits"][target], is_salient)
    if config.rest_bucket:
        weight, bias = output_rows(model)
        current = salient_log_probs(current, F.linear(h_target, weight, bias).float().logsumexp(-1))
        reference = salient_log_probs(reference, anchors["ref_logsumexp"][target])
    keep = torch.ones(len(h_target), dtype=torch.bool, device=hidden.device)
    return config.penalty_fn()(current, reference, keep, reduction="sum")


def task_penalty(
    model: nn.Module,
    batch: dict[str, Tensor],
    h_sel: Tensor,
    positions: Tensor,
    ids: Tensor,
    config: STRConfig,
) -> tuple[Tensor, Tensor]:
    """STR on the task batch against the same PEFT model with its adapters disabled, summed over kept positions.

    Args:
        model: the PEFT model being trained (not a DDP/FSDP wrapper: its adapters are switched off).
        batch: ``input_ids``/``attention_mask``/``labels`` ``(B, L)`` of the task rows.
        h_sel: ``(n, d)`` the model's final hidden states at the selected positions.
        positions: ``(B, L - 1)`` bool, the positions (predicting ``labels[:, 1:]``) that ``h_sel`` holds.
        ids: ``(k,)`` safety-token ids.

    Returns:
        The summed penalty and the fraction of positions left out as refusal conflicts.
    """
    y_sel = batch["labels"][:, 1:][positions]
    w_ids, b_ids = output_rows(model, ids)
    conflict_fraction = torch.zeros((), device=h_sel.device)
    with reference_mode(model):
        ref_hidden = final_hidden_states(model, batch["input_ids"], batch.get("attention_mask"))[:, :-1][positions]
        ref_salient = salient_logits(ref_hidden, w_ids, b_ids)
        keep = torch.ones_like(y_sel, dtype=torch.bool)
        if config.mask_conflicts and y_sel.numel():
            weight, bias = output_rows(model)
            ref_label = (ref_hidden * weight[y_sel]).sum(-1) + (0 if bias is None else bias[y_sel])
            conflicts = refusal_conflicts(ref_salient, ref_label, y_sel, ids)
            keep = ~conflicts
            conflict_fraction = conflicts.float().mean()
    penalty = config.penalty_fn()(salient_logits(h_sel, w_ids, b_ids), ref_salient, keep, reduction="sum")
    return penalty, conflict_fraction
