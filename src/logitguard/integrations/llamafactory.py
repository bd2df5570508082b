"""STR in LLaMA-Factory's supervised fine-tuning: ``logitguard llamafactory-train cfg.yaml``.

LLaMA-Factory has no plugin system and rejects unknown YAML keys, so LogitGuard reads the usual LLaMA-Factory YAML
with one extra block, ``logitguard:`` (the keys and defaults of the `str:` section of ``logitguard train``), takes
that block out, puts STR into the trainer class of LLaMA-Factory's SFT workflow, and runs LLaMA-Factory's own
``run_exp`` on the rest. Only ``stage: sft`` is supported. The safety tokens and anchors are made from the model on
first use (or read from ``logitguard.tokens``/``logitguard.anchors``) into ``output_dir``, where
``logitguard_str.json`` records that STR ran. LLaMA-Factory pins its own TRL, so this uses
:mod:`logitguard.hosts.trainer`, never :mod:`logitguard.hosts.sft_trainer`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from logitguard.errors import LogitGuardError
from logitguard.integrations.host import str_host_trainer
from logitguard.io import read_text
from logitguard.settings import STRSection, build_section, read_yaml_mapping


def split_config(path: Path) -> tuple[dict[str, Any], STRSection]:
    """The LLaMA-Factory config without its ``logitguard:`` block, and that block as STR settings (file/line errors)."""
    config, lines = read_yaml_mapping(read_text(path), path, "a LLaMA-Factory config is a mapping")
    if "logitguard" not in config:
        raise LogitGuardError(f"{path}: no logitguard: block; add one (e.g. logitguard: {{weight: 0.3}})")
    if config.get("stage", "sft") != "sft":
        raise LogitGuardError(f"{path}: LogitGuard STR supports stage: sft, not {config['stage']!r}")
    section = build_section(STRSection, config.pop("logitguard") or {}, "logitguard.", path, lines)
    return config, section


def run(path: Path) -> None:
    """LLaMA-Factory's ``run_exp`` on ``path``, its SFT trainer with STR."""
    from llamafactory.train.sft import workflow
    from llamafactory.train.tuner import run_exp

    config, section = split_config(path)
    if section.enabled:
        workflow.CustomSeq2SeqTrainer = str_host_trainer(workflow.CustomSeq2SeqTrainer, section)
    else:
        print("\nLogitGuard STR is OFF (logitguard.enabled: false): LLaMA-Factory's own trainer\n", file=sys.stderr)
    run_exp(config)
