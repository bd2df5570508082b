"""Safety Token Regularization for one training step: the settings and the one objective every host calls.

:class:`STRObjective` is the single implementation of an STR step. A host (the custom loop of
:mod:`logitguard.hosts.custom_loop`, :class:`~logitguard.hosts.trainer.STRTrainerMixin` in a ``transformers.Trainer``,
or an integration) does three things around it:

1. ``draw = objective.anchor_rows(step, part, parts)``: its share of the step's anchor draw;
2. ``inputs = objective.forward_inputs(batch, draw)``: the rows its own forward pass runs (the anchor sequences
   packed end to end into rows of the task's length after the task rows, labels ``-100``, by default), then its
   forward pass over ``inputs.model_inputs()``, keeping the final hidden states;
3. ``sums = objective.penalties(model, hidden, batch, inputs)``: the STR terms as sums over positions with their
   counts; the host divides them by its own counts (per batch, or per optimizer step across ranks and
   micro-batches) and adds ``config.weight`` times them to its task loss.

The safety-token logits are always ``hidden @ W_out[ids].T``: no full-vocabulary logits beyond the
log-normaliser at anchor positions. The references:

* ``"anchors"``: harmful prompts with the aligned model's refusals, references cached before training
  (:mod:`logitguard.core.anchor_cache`); optionally also *benign anchors* (two-sided STR): safe prompts that sound
  unsafe with the aligned model's own helpful answers, under the same penalty, so fine-tuning can push the model
  neither toward complying with harmful requests nor toward refusing safe ones;
* ``"task"``: the task batch itself, the reference being the same PEFT model with its adapters disabled.
  Positions where that reference would rather emit a safety token than the data's own next token are
  *conflicts* (the aligned model refuses what the task asks for); they are left out, since pinning them
  would block the task.

Shapes: ``B`` task rows, ``L`` their length, ``A`` anchor sequences, ``d`` hidden size, ``k`` safety tokens,
``n`` selected positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from logitguard.core.anchor_cache import AnchorCache, next_tokens
from logitguard.core.model_access import final_hidden_states, head_available, output_rows, reference_mode
from logitguard.core.packing import is_right_padded, pack, packed_index, packed_position_ids, plan_packing
from logitguard.core.penalties import (
    Penalty,
    get_penalty,
    salient_kl,
    salient_log_probs,
    salient_logits,
    with_target_column,
)
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.data.chat import IGNORE_INDEX
from logitguard.domains import NON_NEGATIVE, POSITIVE, at_least, check_fields, within
from logitguard.errors import LogitGuardError

Reference = Literal["anchors", "task", "both"]
AnchorPass = Literal["auto", "packed", "shared", "separate"]
ANCHOR_PASSES = ("auto", "packed", "shared", "separate")


@dataclass
class STRConfig:
    """Settings of Safety Token Regularization.

    Attributes:
        penalty: ``"kl"`` (KL restricted to the safety tokens) or ``"mse"`` (squared logit deviation).
        weight: λ, the penalty's weight in ``loss = task + λ·STR``.
        reference: ``"anchors"``, ``"task"`` or ``"both"``.
        anchors_per_step: anchor rows per optimizer step, shared out over ranks and gradient-accumulation
            micro-batches (each step's anchor term is the mean over all of them).
        benign_anchors_per_step: benign anchor rows per optimizer step (two-sided STR; 0: one-sided). They need a
            benign anchor cache and form a term of their own, ``str_benign``, also weighted by λ.
        anchor_every: anchors run on every ``anchor_every``-th optimizer step only (cheaper, weaker).
        anchor_pass: how the anchor sequences meet the task rows. ``"packed"``: packed end to end into as few rows
            of the task's length as they fill, in the task rows' own forward pass (one forward and one backward
            carry both; needs right-padded task rows). ``"separate"``: a short forward pass of their own.
            ``"shared"``: each padded to the task length as a row of the task pass (costs a whole row per
            anchor). ``"auto"``: packed when the task rows are right-padded, else separate
            (``docs/design.md`` has the measurements).
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
    anchor_pass: AnchorPass = "auto"
    temperature: float = field(default=1.0, metadata=within(POSITIVE))
    mask_conflicts: bool = True
    rest_bucket: bool = True
    target_bucket: bool = True

    def __post_init__(self) -> None:
        get_penalty(self.penalty)
        check_fields(self)
        if self.reference not in ("anchors", "task", "both"):
            raise LogitGuardError(f"reference must be 'anchors', 'task' or 'both', got {self.reference!r}")
        if self.anchor_pass not in ANCHOR_PASSES:
            raise LogitGuardError(f"anchor_pass must be one of {', '.join(ANCHOR_PASSES)}, got {self.anchor_pass!r}")
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


@lru_cache(maxsize=8)
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


class AnchorTargets:
    """An anchor cache's target positions, flattened once: what the penalty reads at each of them.

    Attributes (``T`` target positions of the whole cache, in row order):
        lengths: ``(N,)`` each row's real length.
        start: ``(N + 1,)`` where each row's targets begin in the flat tensors.
        reference: ``(T, k + 2)`` fp32: the reference safety-token logits, log-normaliser and own-next-token logit.
        next_ids: ``(T,)`` the token that follows each target position.
    """

    def __init__(self, cache: AnchorCache) -> None:
        mask = cache.target_mask
        self.lengths = cache.attention_mask.sum(1)
        self.start = F.pad(mask.sum(1).cumsum(0), (1, 0))
        self._start = self.start.tolist()  # read per step on the host: a list, not tensor scalars
        self.reference = torch.cat(
            [
                cache.ref_logits[mask],
                cache.ref_logsumexp[mask].unsqueeze(-1),
                cache.ref_target_logits[mask].unsqueeze(-1),
            ],
            dim=-1,
        ).float()
        self.next_ids = next_tokens(cache.input_ids)[mask]

    def flat_index(self, rows: Tensor) -> Tensor:
        """``(n,)`` the flat indices of the targets of ``rows``, row by row."""
        return torch.cat([torch.arange(self._start[r], self._start[r + 1]) for r in rows.tolist()])


@dataclass
class AnchorRows:
    """One host's share of a step's anchor draw: rows of the harmful (refusal) cache and of the benign one.

    Attributes:
        harmful: ``(A_h,)`` rows of the anchor cache.
        benign: ``(A_b,)`` rows of the benign anchor cache (empty when one-sided).
        step_positions: target positions in the whole step's harmful draw (all shares together): the anchor term's
            denominator when a step is split over ranks or micro-batches.
        benign_step_positions: the same for the benign draw.
    """

    harmful: Tensor
    benign: Tensor
    step_positions: int
    benign_step_positions: int


@dataclass
class AnchorLayout:
    """Where the anchor target positions of one pass are, and what the penalty compares them with.

    Attributes:
        mode: ``"packed"``, ``"shared"`` (both inside the host's pass) or ``"separate"``.
        row, column: ``(n,)`` each target position's place in the hidden states holding it (the host's pass, or
            the separate pass's).
        reference: ``(n, k + 2)`` its references (safety-token logits, log-normaliser, own-next-token logit).
        next_ids: ``(n,)`` the anchor's own next token there.
        benign: ``(n,)`` bool, True at benign anchors' positions.
        separate_ids, separate_mask: ``(A, L_a)`` the separate pass's inputs (``"separate"`` only).
    """

    mode: str
    row: Tensor
    column: Tensor
    reference: Tensor
    next_ids: Tensor
    benign: Tensor
    separate_ids: Tensor | None = None
    separate_mask: Tensor | None = None

    def to(self, device: torch.device) -> AnchorLayout:
        return AnchorLayout(
            self.mode,
            *(t.to(device, non_blocking=True) for t in (self.row, self.column, self.reference, self.next_ids)),
            self.benign.to(device, non_blocking=True),
            *(None if t is None else t.to(device, non_blocking=True) for t in (self.separate_ids, self.separate_mask)),
        )


@dataclass
class ForwardInputs:
    """The rows a host's forward pass runs: ``(B [+ P], L')`` tensors, task rows first.

    ``attention_mask`` is None when packed anchor rows join the pass (their ``position_ids`` mark the sequences;
    the right-padded task rows need no mask under causal attention); ``position_ids`` is None otherwise.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    position_ids: Tensor | None
    labels: Tensor  # (B [+ P], L'): -100 on anchor rows, so the task loss and token counts never see them
    layout: AnchorLayout | None
    task_rows: int  # B: the rows after them are anchors

    @property
    def extra_rows(self) -> int:
        """Anchor rows in this pass after the task rows (0 when the anchors run apart or there are none)."""
        return self.input_ids.shape[0] - self.task_rows

    def model_inputs(self, logits_for_anchor_rows: bool = False) -> dict[str, Tensor]:
        """The keyword arguments of the host's forward pass (an absent mask or position is left out).

        The labels cover the task rows only, for a forward whose LM head sees only those rows
        (:func:`~logitguard.core.model_access.head_on_first_rows`: no logits are computed for anchor rows); with
        ``logits_for_anchor_rows`` they cover every row (a fused head that skips ``-100`` labels, as TRL's).
        """
        labels = self.labels if logits_for_anchor_rows else self.labels[: self.task_rows]
        inputs = {"input_ids": self.input_ids, "labels": labels}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs


@dataclass
class STRSums:
    """STR terms as sums over positions, with their counts; each host normalises them its own way.

    Attributes:
        anchor: scalar, the penalty summed over this share's harmful anchor target positions (0 without anchors).
        benign: scalar, the same over its benign anchor target positions (0 when one-sided).
        task: scalar, the task-reference penalty summed over this batch's label positions (conflicts count 0).
        task_positions: scalar, label positions in this batch.
        conflict_fraction: scalar, share of label positions left out as refusal conflicts.
    """

    anchor: Tensor
    benign: Tensor
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
        benign_anchors: the benign anchor cache; required when ``config.benign_anchors_per_step > 0``.
    """

    def __init__(
        self,
        config: STRConfig,
        safety_tokens: SafetyTokens,
        anchors: AnchorCache | None = None,
        seed: int = 0,
        benign_anchors: AnchorCache | None = None,
    ) -> None:
        if config.uses_anchors and anchors is None:
            raise LogitGuardError(f"STR reference {config.reference!r} needs an anchor cache")
        if config.two_sided and benign_anchors is None:
            raise LogitGuardError("two-sided STR (benign_anchors_per_step > 0) needs a benign anchor cache")
        self.config = config
        self.ids = safety_tokens.id_tensor()
        self.anchors = anchors if config.uses_anchors else None
        self.benign_anchors = benign_anchors if config.two_sided else None
        self.schedule = self.benign_schedule = None
        if self.anchors is not None:
            self.schedule = AnchorSchedule(len(anchors), config.anchors_per_step, config.anchor_every, seed)
            self.targets = AnchorTargets(self.anchors)
        if self.benign_anchors is not None:
            every = config.anchor_every
            self.benign_schedule = AnchorSchedule(len(benign_anchors), config.benign_anchors_per_step, every, seed + 1)
            self.benign_targets = AnchorTargets(self.benign_anchors)
        self._device_ids: dict[torch.device, Tensor] = {}
        self._task_right_padded: bool | None = None

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
        benign = torch.zeros(0, dtype=torch.long)
        benign_positions = 1
        if self.benign_schedule is not None:
            benign_draw = self.benign_schedule.rows(step)
            if len(benign_draw) < parts:
                raise LogitGuardError(
                    f"benign_anchors_per_step ({len(benign_draw)}) must be at least processes × gradient-accumulation "
                    f"steps ({parts})"
                )
            benign = shard(benign_draw, part, parts)
            benign_positions = int(self.benign_anchors.target_mask[benign_draw].sum())
        positions = int(self.anchors.target_mask[draw].sum())
        return AnchorRows(shard(draw, part, parts), benign, max(positions, 1), max(benign_positions, 1))

    def _sequences(self, rows: AnchorRows) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The drawn anchor sequences ``(A, L_a)`` right-padded, their lengths ``(A,)``, target mask ``(A, L_a)``,
        and their targets' references ``(n, k + 2)`` and next tokens ``(n,)``, harmful first, then benign."""
        parts = [(self.anchors, self.targets, rows.harmful)]
        if self.benign_anchors is not None and len(rows.benign):
            parts.append((self.benign_anchors, self.benign_targets, rows.benign))
        lengths = torch.cat([targets.lengths[r] for _, targets, r in parts])
        width = int(lengths.max())
        ids = torch.cat(
            [F.pad(c.input_ids[r, :width], (0, width - min(width, c.input_ids.shape[1]))) for c, _, r in parts]
        )
        mask = torch.cat(
            [F.pad(c.target_mask[r, :width], (0, width - min(width, c.target_mask.shape[1]))) for c, _, r in parts]
        )
        flat = [targets.flat_index(r) for _, targets, r in parts]
        reference = torch.cat([targets.reference[i] for (_, targets, _), i in zip(parts, flat, strict=True)])
        next_ids = torch.cat([targets.next_ids[i] for (_, targets, _), i in zip(parts, flat, strict=True)])
        return ids[:, :width], lengths, mask[:, :width], reference, next_ids

    def pass_mode(self, task_right_padded: bool) -> str:
        """The anchor pass this objective uses (``anchor_pass``, with ``"auto"`` resolved)."""
        mode = self.config.anchor_pass
        if mode == "auto":
            return "packed" if task_right_padded else "separate"
        if mode == "packed" and not task_right_padded:
            raise LogitGuardError(
                "anchor_pass 'packed' needs right-padded task rows (the collator pads on the left); "
                "use anchor_pass 'auto' or 'separate'"
            )
        return mode

    def forward_inputs(self, batch: dict[str, Tensor], rows: AnchorRows | None) -> ForwardInputs:
        """The task batch ``(B, L)``, followed by the anchor rows when they join its pass (packed or shared).

        Whether the task rows are right-padded (what packing needs) is read from the first batch only: a collator
        pads one way, and reading it costs a host synchronisation.
        """
        with record_function("str: anchor layout"):
            return self._forward_inputs(batch, rows)

    def _forward_inputs(self, batch: dict[str, Tensor], rows: AnchorRows | None) -> ForwardInputs:
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if rows is None:
            return ForwardInputs(input_ids, attention_mask, None, labels, None, len(input_ids))
        if self._task_right_padded is None:
            self._task_right_padded = is_right_padded(attention_mask)
        device = input_ids.device
        n_task, length = input_ids.shape
        ids, lengths, target, reference, next_ids = self._sequences(rows)
        benign = torch.zeros(len(next_ids), dtype=torch.bool)
        benign[int(self.anchors.target_mask[rows.harmful].sum()) :] = True
        mode = self.pass_mode(self._task_right_padded)
        if mode == "separate":
            row, column = target.nonzero(as_tuple=True)
            separate_mask = (torch.arange(ids.shape[1]) < lengths.unsqueeze(1)).long()
            layout = AnchorLayout(mode, row, column, reference, next_ids, benign, ids, separate_mask).to(device)
            return ForwardInputs(input_ids, attention_mask, None, labels, layout, n_task)
        if mode == "shared":
            width = max(length, ids.shape[1])
            row, column = target.nonzero(as_tuple=True)
            layout = AnchorLayout(mode, row + n_task, column, reference, next_ids, benign).to(device)
            anchor_mask = (torch.arange(width) < lengths.unsqueeze(1)).long().to(device)
            return ForwardInputs(
                torch.cat([_pad_to(input_ids, width, 0), _pad_to(ids.to(device), width, 0)]),
                torch.cat([_pad_to(attention_mask, width, 0), anchor_mask]),
                None,
                torch.cat([_pad_to(labels, width, IGNORE_INDEX), _ignored(len(ids), width, labels)]),
                layout,
                n_task,
            )
        # Packed: first into the task rows' own padding (computed anyway), then into as few new rows as they fill.
        width = max(length, ids.shape[1])
        plan = plan_packing(lengths, width, used=attention_mask.sum(1).cpu())
        row, column = packed_index(plan, target)
        layout = AnchorLayout(mode, row, column, reference, next_ids, benign).to(device)
        packed_labels = _ignored(plan.rows, width, labels)
        packed_labels[:n_task, : labels.shape[1]] = labels
        return ForwardInputs(
            pack(ids, plan, 0, existing=_pad_to(input_ids, width, 0)),
            None,
            packed_position_ids(plan).to(device),
            packed_labels,
            layout,
            n_task,
        )

    def penalties(self, model: nn.Module, hidden: Tensor, batch: dict[str, Tensor], inputs: ForwardInputs) -> STRSums:
        """The STR sums of one forward pass (the LM head's rows read whole: :func:`head_available`).

        Args:
            model: the model being trained (a PEFT model for the task reference; not a DDP/FSDP wrapper).
            hidden: ``(B [+ P], L', d)`` final hidden states of the host's forward pass over ``inputs``.
            batch: the task rows ``input_ids``/``attention_mask``/``labels`` ``(B, L)``.
            inputs: what :meth:`forward_inputs` returned for this pass.
        """
        with head_available(model):
            return self._penalties(model, hidden, batch, inputs)

    def _penalties(self, model: nn.Module, hidden: Tensor, batch: dict[str, Tensor], inputs: ForwardInputs) -> STRSums:
        device = hidden.device
        ids = self._device_ids.setdefault(device, self.ids.to(device))
        zero = hidden.new_zeros((), dtype=torch.float32)
        anchor = benign = task = task_positions = conflicts = zero
        layout = inputs.layout
        if layout is not None:
            if layout.mode == "separate":
                with record_function("str: separate pass"):
                    states = final_hidden_states(model, layout.separate_ids, layout.separate_mask)
            else:
                states = hidden
            with record_function("str: anchor penalty"):
                per_position = anchor_penalty(model, states[layout.row, layout.column], layout, ids, self.config)
            anchor = torch.where(layout.benign, 0.0, per_position).sum()
            benign = torch.where(layout.benign, per_position, 0.0).sum()
        if self.config.uses_task:
            labels = batch["labels"]
            positions = labels[:, 1:] != IGNORE_INDEX
            n_task = labels.shape[0]
            h_sel = hidden[:n_task, : labels.shape[1] - 1][positions]
            with record_function("str: task reference"):
                task, conflicts = task_penalty(model, batch, h_sel, positions, ids, self.config)
            task_positions = positions.sum()
        return STRSums(anchor, benign, task, task_positions, conflicts)


def _pad_to(t: Tensor, length: int, value: float) -> Tensor:
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]), value=value)


def _ignored(rows: int, width: int, like: Tensor) -> Tensor:
    return torch.full((rows, width), IGNORE_INDEX, dtype=like.dtype, device=like.device)


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


def anchor_penalty(model: nn.Module, h_target: Tensor, layout: AnchorLayout, ids: Tensor, config: STRConfig) -> Tensor:
    """STR at anchor target positions: ``(n,)`` the penalty of the model's bucket distribution against the cache's.

    Args:
        model: the model being trained (its output embedding gives ``W_out[ids]``).
        h_target: ``(n, d)`` final hidden states at the target positions.
        layout: their references ``(n, k + 2)`` and next tokens ``(n,)``.
        ids: ``(k,)`` safety-token ids.
    """
    k = len(ids)
    w_ids, b_ids = output_rows(model, ids)
    current, reference = salient_logits(h_target, w_ids, b_ids), layout.reference[:, :k]
    if config.target_bucket:
        w_next, b_next = output_rows(model, layout.next_ids)
        current_next = (h_target * w_next.to(h_target.dtype)).sum(-1) + (0 if b_next is None else b_next)
        is_salient = (layout.next_ids.unsqueeze(-1) == ids).any(-1)
        current = with_target_column(current, current_next, is_salient)
        reference = with_target_column(reference, layout.reference[:, k + 1], is_salient)
    if config.rest_bucket:
        weight, bias = output_rows(model)
        current = salient_log_probs(current, F.linear(h_target, weight, bias).float().logsumexp(-1))
        reference = salient_log_probs(reference, layout.reference[:, k])
    keep = torch.ones(len(h_target), dtype=torch.bool, device=h_target.device)
    return config.penalty_fn()(current, reference, keep, reduction="none")


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
