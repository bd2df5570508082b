"""Continual fine-tuning with ``logitguard train``: a run that goes on from an earlier one's adapter.

A stage is an ordinary run whose ``continue_from`` names the output folder of the stage before it (one config per
stage), or one entry of a config's ``stages`` list (``OUTPUT_DIR/01-NAME``, ``02-NAME``, ...). A stage trains the
earlier stage's adapter further, on the same base model: it is not merged. So the base stays the original aligned
model, and with it everything STR and the evaluation compare against: the task-batch reference (the model with its
adapters off), the anchors' references and fingerprint, and ``logitguard eval --model BASE --adapter STAGE/adapter``
for any stage. STR's artifacts are the first stage's (made from the aligned model, adapters off, when a stage needs
them first). Each stage gets a fresh optimizer and learning-rate schedule, and writes ``stage.json``: its place in
the sequence, the adapter it started from (path and content fingerprint) and the artifacts it trained with.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from logitguard.cli.run_config import RunConfig
from logitguard.errors import LogitGuardError
from logitguard.io import read_json

STAGE_FILE = "stage.json"
ARTIFACT_FILES = {"tokens": "safety_tokens.json", "anchors": "anchors.safetensors"}
ARTIFACT_FILES["benign_anchors"] = "benign_anchors.safetensors"


def earlier_stage(config: RunConfig) -> dict[str, Any]:
    """What this run continues: the earlier run's folder, adapter, record and config, checked to fit this run."""
    folder = Path(config.continue_from)
    adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").is_file() or not (folder / "train_log.json").is_file():
        raise LogitGuardError(
            f"continue_from {folder}: no finished LoRA run there (its adapter/ and train_log.json); finish that stage "
            "first (logitguard train --resume)"
        )
    if not config.lora.enabled:
        raise LogitGuardError("continue_from trains an earlier stage's LoRA adapter further: it needs lora.enabled")
    earlier = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    lora = {key: value for key, value in config.to_dict()["lora"].items() if key != "dropout"}
    before = {key: value for key, value in (earlier.get("lora") or {}).items() if key != "dropout"}
    if lora != before:
        raise LogitGuardError(
            f"continue_from {folder}: its adapter was trained with lora {before}, this run asks for {lora}; a stage "
            "trains the same adapter further, so keep the lora section"
        )
    record = read_json(folder / STAGE_FILE, dict, "a stage record") if (folder / STAGE_FILE).is_file() else {}
    return {"folder": folder, "adapter": adapter, "record": record, "config": earlier}


def artifact_paths(earlier: dict[str, Any]) -> dict[str, str]:
    """The STR artifacts the earlier stage trained with (so every stage pins the same references)."""
    recorded = earlier["record"].get("artifacts")
    if recorded is not None:
        return {key: path for key, path in recorded.items() if Path(path).is_file()}
    section = earlier["config"].get("str") or {}
    found = {}
    for key, name in ARTIFACT_FILES.items():
        path = Path(section.get(key) or earlier["folder"] / name)
        if path.is_file():
            found[key] = str(path.resolve())
    return found


def with_earlier_artifacts(config: RunConfig, earlier: dict[str, Any]) -> RunConfig:
    """``config`` whose STR section takes the earlier stage's artifacts where it names none of its own."""
    section = config.str_section
    given = {key: getattr(section, key) or path for key, path in artifact_paths(earlier).items()}
    return replace(config, str_section=replace(section, **given))


def continued_model(config: RunConfig, model, earlier: dict[str, Any]):
    """``model`` (the base) with the earlier stage's adapter loaded trainable: checked to have been trained on this
    very base (its fingerprint)."""
    from logitguard.models.adapters import load_adapter

    return load_adapter(model, earlier["adapter"], config.model.name_or_path, trainable=True)


def base_model(model, continued: bool):
    """A context in which ``model`` is the aligned base: adapters off when this run continues an earlier one (STR's
    artifacts are made, and optionally samples scored, against the aligned model, not the previous stage)."""
    return model.disable_adapter() if continued else nullcontext()


def stage_record(config: RunConfig, earlier: dict[str, Any] | None, prepared, index: int | None, total: int | None):
    """``stage.json``: where this run sits in its sequence and what it started from."""
    from logitguard.fingerprints import folder_fingerprint

    number = index if index is not None else (earlier["record"].get("stage", 1) + 1 if earlier else 1)
    record: dict[str, Any] = {"stage": number, "of": total, "base": config.model.name_or_path}
    if earlier is not None:
        record["continued_from"] = str(earlier["adapter"].resolve())
        record["continued_from_fingerprint"] = folder_fingerprint(earlier["adapter"])
    if prepared is not None:
        out = Path(config.output_dir)
        paths = {"tokens": config.str_section.tokens, "anchors": config.str_section.anchors}
        paths["benign_anchors"] = config.str_section.benign_anchors
        found = {key: Path(path or out / ARTIFACT_FILES[key]) for key, path in paths.items()}
        record["artifacts"] = {key: str(path.resolve()) for key, path in found.items() if path.is_file()}
    return record
