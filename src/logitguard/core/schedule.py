"""Which anchor rows each optimizer step uses, and which share of them one forward pass takes.

The draw is a pure function of the step, so a resumed run and every rank of a distributed run agree on it without
saving or communicating any state; each rank and gradient-accumulation micro-batch (a :class:`StepShare`) then
takes its own contiguous part of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from logitguard.errors import LogitGuardError


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass(frozen=True)
class AnchorSchedule:
    """Seeded shuffles of a cache's ``n_rows`` rows, ``per_step`` rows for every ``every``-th optimizer step."""

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


@dataclass(frozen=True)
class StepShare:
    """One forward pass's place in its optimizer step: micro-batch ``micro`` of ``micro_batches`` (gradient
    accumulation) on process ``rank`` of ``world`` (data parallel, gradients averaged over processes)."""

    micro: int = 0
    micro_batches: int = 1
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.micro < self.micro_batches and 0 <= self.rank < self.world):
            raise LogitGuardError(
                f"micro-batch {self.micro} of {self.micro_batches} on process {self.rank} of {self.world}: "
                "each index must lie in [0, count)"
            )

    @property
    def part(self) -> int:
        """This share's index among all of the step's shares (process-major)."""
        return self.rank * self.micro_batches + self.micro

    @property
    def parts(self) -> int:
        """How many shares the step has: processes × micro-batches."""
        return self.world * self.micro_batches

    @classmethod
    def of_process(cls, micro: int = 0, micro_batches: int = 1) -> StepShare:
        """This process's share under ``torch.distributed`` (rank and world size read from it), or a lone one."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(micro, micro_batches, dist.get_rank(), dist.get_world_size())
        return cls(micro, micro_batches)


def shard(rows: Tensor, index: int, count: int) -> Tensor:
    """The ``index``-th of ``count`` near-equal contiguous parts of ``rows``."""
    return torch.tensor_split(rows, count)[index]


@dataclass
class AnchorRows:
    """One share of a step's anchor draw: rows of the harmful (refusal) cache and of the benign one.

    Attributes:
        harmful: ``(A_h,)`` rows of the anchor cache.
        benign: ``(A_b,)`` rows of the benign anchor cache (empty when one-sided).
        step_positions: target positions in the whole step's harmful draw (all shares together): the anchor term's
            denominator, so the shares' terms add up to the step's mean.
        benign_step_positions: the same for the benign draw.
    """

    harmful: Tensor
    benign: Tensor
    step_positions: int
    benign_step_positions: int
