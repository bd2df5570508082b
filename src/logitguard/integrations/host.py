"""A framework's own trainer class with STR added, making or reading its STR artifacts itself.

Frameworks build their trainer with their own arguments, so the STR settings cannot be passed to it: the class
:func:`str_host_trainer` returns carries them, and makes the safety tokens and anchors from the model it is given
(the aligned model with fresh adapters), in ``output_dir`` unless the settings name existing files.
It announces itself loudly and writes ``output_dir/logitguard_str.json``, so a run can be shown to have had STR.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from logitguard.artifacts import section_artifacts
from logitguard.errors import LogitGuardError
from logitguard.hosts.trainer import STRTrainerMixin
from logitguard.io import write_json
from logitguard.settings import STRSection

MARKER = "logitguard_str.json"


def str_host_trainer(host: type, section: STRSection) -> type:
    """``host`` (a ``transformers.Trainer`` subclass) with STR as ``section`` (a ``str:`` section) sets it."""

    class STRHostTrainer(STRTrainerMixin, host):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            model = kwargs["model"] if "model" in kwargs else args[0]
            tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
            if tokenizer is None:
                raise LogitGuardError(f"LogitGuard STR in {host.__name__} needs the tokenizer (processing_class)")
            training_args = kwargs["args"] if "args" in kwargs else args[1]
            out = Path(training_args.output_dir)
            prepared = section_artifacts(section, model, tokenizer, out)
            tokens, anchors = prepared.artifacts
            super().__init__(
                *args,
                str_config=section.str_config(),
                safety_tokens=tokens,
                anchors=anchors,
                benign_anchors=prepared.benign_anchors,
                **kwargs,
            )
            announce(self, section, out, tokens, anchors)

    STRHostTrainer.__name__ = STRHostTrainer.__qualname__ = f"STR{host.__name__}"
    return STRHostTrainer


def announce(trainer: Any, section: STRSection, out: Path, tokens: Any, anchors: Any) -> None:
    """A banner on stderr and the marker file: STR is active, with which settings and artifacts."""
    config = section.str_config()
    n_anchors = len(anchors) if anchors is not None else 0
    banner = (
        f"LogitGuard STR is ACTIVE in {type(trainer).__name__}: penalty {config.penalty}, λ={config.weight}, "
        f"reference {config.reference}, k={tokens.k}, {n_anchors} anchors"
    )
    print(f"\n{'=' * len(banner)}\n{banner}\n{'=' * len(banner)}\n", file=sys.stderr, flush=True)
    if trainer.is_world_process_zero():
        write_json(
            out / MARKER,
            {
                "active": True,
                "trainer": type(trainer).__name__,
                "str": dataclasses.asdict(section),
                "safety_tokens": tokens.tokens,
                "anchors": n_anchors,
            },
        )
