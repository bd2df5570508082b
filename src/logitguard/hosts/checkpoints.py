"""Checkpoints that resume never trusts half-written.

``transformers.Trainer`` writes a checkpoint folder file by file, and its own
``get_last_checkpoint`` picks the newest folder whatever state it is in. A run
killed during a save would then resume from a broken checkpoint. Here a marker
file is written (atomically, after every rank has finished) once a save is
complete, and resuming picks the newest marked checkpoint; unmarked newer ones
are moved aside, not deleted.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from logitguard.errors import LogitGuardError
from logitguard.io import write_json, write_text
from logitguard.models.adapters import BASE_FILE, base_fingerprint

COMPLETE = "logitguard-complete"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class MarkCompleteCheckpoints(TrainerCallback):
    """Writes :data:`COMPLETE` into each checkpoint once the Trainer has saved all of it, and beside a LoRA
    checkpoint's adapter the fingerprint of its base (so ``logitguard eval --adapter CHECKPOINT`` checks it)."""

    def on_save(self, args, state, control, model=None, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if model is not None and hasattr(model, "peft_config") and (folder / "adapter_config.json").is_file():
                write_json(folder / BASE_FILE, {"base_fingerprint": base_fingerprint(model)})
            write_text(folder / COMPLETE, f"{state.global_step}\n")
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
    return [
        _set_aside(path, "incomplete")
        for step, path in _checkpoints(Path(folder))
        if step > last_step and not (path / COMPLETE).is_file()
    ]


def _set_aside(path: Path, label: str) -> Path:
    target, n = path.with_name(f"{label}-{path.name}"), 1
    while target.exists():
        target, n = path.with_name(f"{label}-{path.name}.{n}"), n + 1
    path.rename(target)
    return target


def unreadable_reason(checkpoint: Path) -> str | None:
    """Why a marked checkpoint cannot be resumed from (its trainer state or weights do not read back), or None."""
    from safetensors import safe_open

    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        weights = sorted(checkpoint.glob("*.safetensors"))
        if not weights:
            return "no weights (*.safetensors)"
        for path in weights:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
    except Exception as e:  # OSError, bad JSON, safetensors' own errors on a truncated or garbled file
        return f"{type(e).__name__}: {e}"
    return None


def resumable_checkpoint(folder: str | Path, is_main_process: bool = True) -> Path | None:
    """The newest complete checkpoint that reads back; damaged newer ones are set aside (by the main process).

    Every process calls this; only the main one renames folders, the others skip the damaged ones.
    """
    for _, path in reversed(_checkpoints(Path(folder))):
        if not (path / COMPLETE).is_file():
            continue
        reason = unreadable_reason(path)
        if reason is None:
            if not any(p.name.startswith(("optimizer", "global_step")) for p in path.iterdir()):
                raise LogitGuardError(
                    f"{path} holds no optimizer state (saved with save_only_model?), so "
                    "--resume cannot continue the run as it would have gone; start over in a new output_dir"
                )
            return path
        if is_main_process:
            moved = _set_aside(path, "unreadable")
            print(f"{path} is unreadable ({reason}); set aside as {moved.name}, trying an older one", file=sys.stderr)
    return None
