"""Checkpoints that resume never trusts half-written.

``transformers.Trainer`` writes a checkpoint folder file by file, and its own
``get_last_checkpoint`` picks the newest folder whatever state it is in. A run
killed during a save would then resume from a broken checkpoint. Here a marker
file is written (atomically, after every rank has finished) once a save is
complete, and resuming picks the newest marked checkpoint; unmarked newer ones
are moved aside, not deleted.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from logitguard.io import write_text

COMPLETE = "logitguard-complete"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class MarkCompleteCheckpoints(TrainerCallback):
    """Writes :data:`COMPLETE` into each checkpoint once the Trainer has saved all of it."""

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            write_text(Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE, f"{state.global_step}\n")
        return control


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint in ``folder`` with the completion marker, or None."""
    complete = [p for _, p in _checkpoints(Path(folder)) if (p / COMPLETE).is_file()]
    return complete[-1] if complete else None


def set_aside_incomplete(folder: str | Path) -> list[Path]:
    """Rename unmarked checkpoints newer than the last complete one to ``incomplete-checkpoint-N``."""
    last = last_complete_checkpoint(folder)
    last_step = int(_CHECKPOINT.match(last.name).group(1)) if last else -1
    moved = []
    for step, path in _checkpoints(Path(folder)):
        if step > last_step and not (path / COMPLETE).is_file():
            target, n = path.with_name(f"incomplete-{path.name}"), 1
            while target.exists():
                target, n = path.with_name(f"incomplete-{path.name}.{n}"), n + 1
            path.rename(target)
            moved.append(target)
    return moved
