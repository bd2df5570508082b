"""Pack variable-length sequences end to end into rows of a fixed width: the packed anchor pass's layout.

Pure functions of integer tensors (no model). A packed row holds several sequences, each with its own
``position_ids`` starting at 0; ``transformers`` reads a restart of ``position_ids`` (with no 2D attention mask) as
a sequence boundary and keeps attention inside each sequence (SDPA and eager through a block-diagonal causal mask,
flash-attention through its variable-length kernel), so a sequence's hidden states are those of its own forward
pass. Sequences go first into the padding at the end of rows that are already there (the task rows: their padding
is computed anyway), then into new rows. Shapes: ``N`` sequences, ``L`` their padded length, ``R`` existing rows,
``P`` rows in all, ``W`` their width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
    """Whether every row of a ``(B, L)`` mask is ones then zeros (what the packed pass needs of the task rows: with
    causal attention their real tokens then never see what follows them, so they need no 2D mask)."""
    lengths = attention_mask.sum(1, keepdim=True)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool((attention_mask == (columns < lengths)).all())
