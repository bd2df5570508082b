"""Where one step's anchor sequences go in a host's forward pass: packed into the task rows' pass, or apart.

The packed layout writes the anchor sequences end to end, first into the padding at the end of the task rows (it is
computed anyway), then into as few new rows of the task's width as they fill; each sequence gets ``position_ids``
that restart at 0, which ``transformers`` reads (with no 2D attention mask) as a sequence boundary, keeping
attention inside each sequence (SDPA and eager through a block-diagonal causal mask, flash-attention through its
variable-length kernel), so a sequence's hidden states are those of its own forward pass. That needs right-padded
task rows: with causal attention their real tokens then never see what follows them. Padding is checked on every
batch (:func:`is_right_padded`); a left-padded batch runs its anchors in a separate pass, or is refused where
``anchor_pass: packed`` asks for packing.

The packing functions are pure functions of integer tensors (no model). Shapes: ``B`` task rows, ``L`` their
length, ``N`` anchor sequences, ``L_a`` their padded length, ``R`` existing rows, ``P`` rows in all, ``W`` their
width, ``k`` safety tokens, ``n`` target positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from logitguard.core.anchor_cache import AnchorCache, next_tokens
from logitguard.core.config import AnchorPass
from logitguard.data.chat import IGNORE_INDEX
from logitguard.errors import LogitGuardError


@dataclass(frozen=True)
class PackingPlan:
    """Where each sequence goes: ``row[i]``, ``offset[i]`` in a ``(rows, width)`` grid whose first ``existing`` rows
    were already there (their first ``used[r]`` tokens taken)."""

    row: Tensor  # (N,) long
    offset: Tensor  # (N,) long
    lengths: Tensor  # (N,) long
    rows: int
    width: int
    used: Tensor  # (R,) long

    @property
    def existing(self) -> int:
        return len(self.used)


def plan_packing(lengths: Tensor, width: int, used: Tensor | None = None) -> PackingPlan:
    """Sequences of ``lengths`` ``(N,)``, in order, each into the first row with room for it: the free tails of the
    ``R`` rows whose first ``used`` ``(R,)`` tokens are taken, then new rows of ``width``."""
    lengths = lengths.long().cpu()
    used = torch.zeros(0, dtype=torch.long) if used is None else used.long().cpu()
    if len(lengths) and int(lengths.max()) > width:
        raise LogitGuardError(f"a sequence of {int(lengths.max())} tokens cannot be packed into rows of {width}")
    free = (width - used).tolist()
    rows, offsets = [], []
    for length in lengths.tolist():
        row = next((r for r, room in enumerate(free) if room >= length), None)
        if row is None:
            free.append(width)
            row = len(free) - 1
        rows.append(row)
        offsets.append(width - free[row])
        free[row] -= length
    return PackingPlan(
        torch.tensor(rows, dtype=torch.long), torch.tensor(offsets, dtype=torch.long), lengths, len(free), width, used
    )


def pack(values: Tensor, plan: PackingPlan, fill: int, existing: Tensor | None = None) -> Tensor:
    """``(N, L)`` right-padded ``values`` written into the ``(P, W)`` grid: ``existing`` ``(R, W)`` rows first (their
    tails overwritten where sequences go), then new rows of ``fill``. The grid is made on ``existing``'s device, and
    only small index tensors cross to it (no host synchronisation)."""
    device = existing.device if existing is not None else values.device
    grid = torch.full((plan.rows, plan.width), fill, dtype=values.dtype, device=device)
    if existing is not None:
        grid[: plan.existing] = existing
    sequence = torch.arange(len(plan.lengths)).repeat_interleave(plan.lengths)
    column = torch.cat([torch.arange(n) for n in plan.lengths.tolist()]) if len(plan.lengths) else sequence
    rows, columns = plan.row[sequence], plan.offset[sequence] + column
    grid[rows.to(device), columns.to(device)] = values[sequence, column].to(device)
    return grid


def packed_position_ids(plan: PackingPlan) -> Tensor:
    """``(P, W)`` positions: every row counts from 0 (an existing row's own sequence, then its padding), and restarts
    at 0 where a packed sequence starts; the tokens after a row's last sequence continue its count, so they start no
    sequence of their own and causal attention keeps them out of every real one."""
    positions = torch.arange(plan.width).repeat(plan.rows, 1)
    order = sorted(zip(plan.row.tolist(), plan.offset.tolist(), strict=True))
    for row, offset in order:  # left to right within a row: a later start restarts the count again
        positions[row, offset:] = torch.arange(plan.width - offset)
    return positions


def packed_index(plan: PackingPlan, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Where the ``True`` positions of ``mask`` ``(N, L)`` land in the packed grid: ``(rows, columns)``, each ``(n,)``,
    in the order of ``mask[mask]`` (row by row, left to right)."""
    sequence, column = mask.nonzero(as_tuple=True)
    return plan.row[sequence], plan.offset[sequence] + column


def is_right_padded(attention_mask: Tensor) -> bool:
    """Whether every row of a ``(B, L)`` mask is ones then zeros (a row without padding is both: packing is safe)."""
    lengths = attention_mask.sum(1, keepdim=True)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool((attention_mask == (columns < lengths)).all())


class AnchorTargets:
    """An anchor cache's target positions, flattened once: what the penalty reads at each of them.

    Args:
        cache: the anchor cache.
        max_targets: keep only each row's first ``max_targets`` target positions (None: all), and cut each
            sequence after its last kept target (causal attention: the positions kept see nothing after it).

    Attributes (``T`` kept target positions of the whole cache, in row order):
        input_ids: ``(N, L_a)`` the sequences.
        mask: ``(N, L_a)`` bool, the kept target positions.
        lengths: ``(N,)`` each sequence's length through the decoder.
        start: ``(N + 1,)`` where each row's targets begin in the flat tensors.
        reference: ``(T, k + 2)`` fp32: the reference safety-token logits, log-normaliser and own-next-token logit.
        next_ids: ``(T,)`` the token that follows each target position.
    """

    def __init__(self, cache: AnchorCache, max_targets: int | None = None) -> None:
        mask = cache.target_mask
        self.lengths = cache.attention_mask.sum(1)
        if max_targets is not None:
            mask = mask & (mask.cumsum(1) <= max_targets)
            last = torch.where(mask, torch.arange(mask.shape[1]), -1).max(1).values
            self.lengths = torch.where(last >= 0, last + 1, self.lengths)
        self.input_ids, self.mask = cache.input_ids, mask
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

    def positions(self, rows: Tensor) -> int:
        """How many target positions the rows ``rows`` hold."""
        return sum(self._start[r + 1] - self._start[r] for r in rows.tolist())

    def flat_index(self, rows: Tensor) -> Tensor:
        """``(n,)`` the flat indices of the targets of ``rows``, row by row."""
        return torch.cat([torch.arange(self._start[r], self._start[r + 1]) for r in rows.tolist()])


@dataclass
class AnchorSequences:
    """The anchor sequences of one share of a step, harmful first, then benign.

    Attributes:
        ids: ``(A, L_a)`` right-padded token ids.
        lengths: ``(A,)`` their lengths.
        targets: ``(A, L_a)`` bool, their target positions.
        reference: ``(n, k + 2)`` the targets' references (safety-token logits, log-normaliser, own-next-token logit).
        next_ids: ``(n,)`` the anchor's own next token at each target.
        benign: ``(n,)`` bool, True at benign anchors' targets.
    """

    ids: Tensor
    lengths: Tensor
    targets: Tensor
    reference: Tensor
    next_ids: Tensor
    benign: Tensor

    @classmethod
    def gather(cls, parts: list[tuple[AnchorTargets, Tensor]]) -> AnchorSequences:
        """The rows ``r`` of each ``(targets, r)`` in ``parts``, in that order (the harmful cache's first)."""
        lengths = torch.cat([targets.lengths[r] for targets, r in parts])
        width = int(lengths.max())
        ids = torch.cat([_pad_to(targets.input_ids[r, :width], width, 0) for targets, r in parts])
        mask = torch.cat([_pad_to(targets.mask[r, :width], width, False) for targets, r in parts])
        flat = [targets.flat_index(r) for targets, r in parts]
        reference = torch.cat([targets.reference[i] for (targets, _), i in zip(parts, flat, strict=True)])
        next_ids = torch.cat([targets.next_ids[i] for (targets, _), i in zip(parts, flat, strict=True)])
        benign = torch.zeros(len(next_ids), dtype=torch.bool)
        benign[len(flat[0]) :] = True
        return cls(ids, lengths, mask, reference, next_ids, benign)


@dataclass
class AnchorLayout:
    """Where the anchor target positions of one pass are, and what the penalty compares them with.

    Attributes:
        mode: ``"packed"`` (inside the host's pass) or ``"separate"``.
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


def pass_mode(anchor_pass: AnchorPass, task_right_padded: bool) -> str:
    """The anchor pass for one batch: ``anchor_pass``, with ``"auto"`` resolved by that batch's padding."""
    if anchor_pass == "auto":
        return "packed" if task_right_padded else "separate"
    if anchor_pass == "packed" and not task_right_padded:
        raise LogitGuardError(
            "anchor_pass 'packed' needs right-padded task rows, and this batch is padded on the left (or in the "
            "middle); use anchor_pass 'auto' or 'separate', or pad on the right (tokenizer.padding_side = 'right')"
        )
    return anchor_pass


def lay_out(batch: dict[str, Tensor], anchors: AnchorSequences | None, anchor_pass: AnchorPass) -> ForwardInputs:
    """The task batch ``(B, L)``, followed by the anchor sequences when they join its pass (packed), or with a
    separate pass's inputs. The batch's padding is read on every call (one host synchronisation, which the packing
    plan needs anyway)."""
    with record_function("str: anchor layout"):
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if anchors is None:
            return ForwardInputs(input_ids, attention_mask, None, labels, None, len(input_ids))
        device = input_ids.device
        n_task, length = input_ids.shape
        a = anchors
        if pass_mode(anchor_pass, is_right_padded(attention_mask)) == "separate":
            row, column = a.targets.nonzero(as_tuple=True)
            separate_mask = (torch.arange(a.ids.shape[1]) < a.lengths.unsqueeze(1)).long()
            layout = AnchorLayout("separate", row, column, a.reference, a.next_ids, a.benign, a.ids, separate_mask)
            return ForwardInputs(input_ids, attention_mask, None, labels, layout.to(device), n_task)
        # Packed: first into the task rows' own padding (computed anyway), then into as few new rows as they fill.
        width = max(length, a.ids.shape[1])
        plan = plan_packing(a.lengths, width, used=attention_mask.sum(1).cpu())
        row, column = packed_index(plan, a.targets)
        layout = AnchorLayout("packed", row, column, a.reference, a.next_ids, a.benign).to(device)
        packed_labels = torch.full((plan.rows, width), IGNORE_INDEX, dtype=labels.dtype, device=device)
        packed_labels[:n_task, : labels.shape[1]] = labels
        return ForwardInputs(
            pack(a.ids, plan, 0, existing=_pad_to(input_ids, width, 0)),
            None,
            packed_position_ids(plan).to(device),
            packed_labels,
            layout,
            n_task,
        )


def _pad_to(t: Tensor, length: int, value: float) -> Tensor:
    return F.pad(t, (0, length - t.shape[1]), value=value)
