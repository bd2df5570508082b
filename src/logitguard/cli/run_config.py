"""The configuration of ``logitguard train``: YAML sections as dataclasses, checked with file and line.

A run config has the sections ``model``, ``data``, ``lora``, ``training``, ``str``, ``monitor`` and
``selection`` plus ``output_dir``; ``key=value`` overrides use dotted keys (``str.weight=0.5``) and YAML
values. ``training`` takes ``transformers.TrainingArguments`` fields under their own names, checked against
that class's own field types and, for the numbers LogitGuard relies on, their domains
(:data:`TRAINING_DOMAINS`); the other sections are LogitGuard's (:mod:`logitguard.settings`). Unknown keys, keys
given twice, wrong types, non-finite numbers and numbers outside their domain are errors that name the file and
line (or the override), raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from logitguard.domains import (
    AT_LEAST_ONE,
    FRACTION_BELOW_ONE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Domain,
    at_least,
    check_fields,
    check_number,
    check_type,
    within,
)
from logitguard.errors import LogitGuardError
from logitguard.io import read_text
from logitguard.settings import LoraSection, STRSection, build_section, read_yaml_mapping, section_dict


@dataclass
class ModelSection:
    name_or_path: str = ""  # a hub name, a local folder, a .gguf file or a built-in name (logitguard.models)
    revision: str | None = None
    dtype: str = "auto"
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's template
    trust_remote_code: bool = False
    load_in_4bit: bool = False  # QLoRA: NF4 weights via bitsandbytes (CUDA GPU only)


@dataclass
class DataSection:
    train: str = ""  # a JSONL file (records with 'messages', or 'prompt' and 'completion'), or a datasets name
    split: str = "train"  # for datasets names
    max_length: int = field(default=1024, metadata=at_least(2))
    on_overflow: Literal["truncate", "error"] = "truncate"

    def __post_init__(self) -> None:
        check_fields(self, "data.")


@dataclass
class MonitorSection:
    every_steps: int = field(default=0, metadata=within(NON_NEGATIVE))  # 0: off; else the refusal rate every N steps
    prompts: str | None = None  # held-out harmful prompts file; default: built-in ones kept apart from discovery
    min_refusal: float | None = field(default=None, metadata=within(PROBABILITY))
    action: Literal["warn", "stop"] = "warn"
    max_new_tokens: int = field(default=64, metadata=at_least(1))  # long enough to see a refusal go on to comply

    def __post_init__(self) -> None:
        check_fields(self, "monitor.")


@dataclass
class SelectionSection:
    """Sample selection before training (:class:`~logitguard.selection.SelectionConfig` has every choice)."""

    rule: Literal["drop-top", "moderate", "lowest", "highest", "random"] = "drop-top"
    fraction: float = field(default=0.0, metadata=within(FRACTION_BELOW_ONE))  # drop-top: share dropped; 0: off
    threshold: float | None = None  # or drop-top: drop every sample scoring at least this (0.1 with refusal-opening)
    keep: float | None = field(default=None, metadata=within(Domain(0, 1, low_open=True, high_open=True)))
    loss_band: float | None = field(default=1.0, metadata=within(POSITIVE))  # moderate/lowest/highest: ±σ of loss
    score: Literal["gradient-norm", "safety", "first-tokens", "refusal", "refusal-opening"] = "gradient-norm"
    gradient: Literal["dense", "trainable"] = "dense"
    last_layers: int | None = field(default=None, metadata=at_least(1))
    weights: Literal["stage", "aligned"] = "stage"  # continual: score at this stage's start, or the aligned model
    batch_size: int = field(default=8, metadata=at_least(1))

    def __post_init__(self) -> None:
        check_fields(self, "selection.")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0 or self.threshold is not None or self.keep is not None

    def selection_config(self, max_length: int, on_overflow: str, seed: int):
        """The :class:`~logitguard.selection.SelectionConfig` of this section."""
        from logitguard.selection import SelectionConfig

        fraction = self.fraction if self.rule == "drop-top" and self.threshold is None else None
        return SelectionConfig(
            fraction,
            self.score,
            self.batch_size,
            max_length,
            on_overflow,
            self.threshold,
            rule=self.rule,
            keep=self.keep,
            loss_band=self.loss_band,
            gradient=self.gradient,
            last_layers=self.last_layers,
            seed=seed,
        )


# `training:` is TrainingArguments' own fields; LogitGuard's defaults where they differ from the Trainer's.
TRAINING_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 1.0,
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # a fraction of all steps when below 1
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,
    "seed": 0,
    "report_to": [],
}
# Fields LogitGuard sets itself, and what to do instead.
TRAINING_RESERVED = {
    "output_dir": "set the top-level output_dir (checkpoints go to OUTPUT_DIR/checkpoints)",
    "remove_unused_columns": "LogitGuard's collator needs every column",
    "resume_from_checkpoint": "pass --resume",
}
RENAMED = {"epochs": "num_train_epochs", "per_device_batch_size": "per_device_train_batch_size"}
RENAMED |= {"lr_scheduler": "lr_scheduler_type"}
# The domains of the TrainingArguments numbers a run depends on (the Trainer accepts, e.g., max_steps=-5 and a
# negative learning rate without a word). max_steps -1 means "by epochs"; every float must also be finite.
MAX_STEPS = Domain(-1)
TRAINING_DOMAINS: dict[str, Domain] = {
    "max_steps": MAX_STEPS,
    "num_train_epochs": POSITIVE,
    "learning_rate": POSITIVE,
    "per_device_train_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "warmup_steps": NON_NEGATIVE,
    "warmup_ratio": Domain(0, 1),
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": Domain(0, 1, high_open=True),
    "adam_beta2": Domain(0, 1, high_open=True),
    "adam_epsilon": POSITIVE,
    "logging_steps": POSITIVE,
    "save_steps": POSITIVE,
    "save_total_limit": Domain(2),  # a complete checkpoint survives while the next one is written
    "seed": NON_NEGATIVE,
    "data_seed": NON_NEGATIVE,
    "label_smoothing_factor": Domain(0, 1, high_open=True),
    "dataloader_num_workers": NON_NEGATIVE,
}


def read_training(data: Any, key: str, path: Path, lines: dict[str, str]) -> dict[str, Any]:
    """The ``training`` section checked field by field against ``TrainingArguments``, with LogitGuard's defaults."""
    from transformers import TrainingArguments

    if not isinstance(data, dict):
        raise LogitGuardError(f"{path}, {lines.get(key, 'top level')}: training must be a mapping")
    hints = typing.get_type_hints(TrainingArguments)
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    checked = dict(TRAINING_DEFAULTS)
    for name, value in data.items():
        at = f"{path}, {lines.get(f'{key}.{name}', 'top level')}"
        if name in TRAINING_RESERVED:
            raise LogitGuardError(f"{at}: training.{name} is set by LogitGuard: {TRAINING_RESERVED[name]}")
        if name not in known:
            hint = f"; did you mean {RENAMED[name]!r}?" if name in RENAMED else ""
            raise LogitGuardError(
                f"{at}: unknown key 'training.{name}': not a transformers.TrainingArguments field{hint}"
            )
        checked[name] = check_type(value, hints[name], f"training.{name}", at)
        try:
            check_number(value, f"training.{name}", TRAINING_DOMAINS.get(name))
        except LogitGuardError as e:
            raise LogitGuardError(f"{at}: {e}") from None
        if name == "max_steps" and value == 0:
            raise LogitGuardError(f"{at}: training.max_steps = 0 trains nothing; give -1 (train by epochs) or >= 1")
    return checked


STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def read_stages(data: Any, key: str, path: Path, lines: dict[str, str]) -> list[dict]:
    """The ``stages`` list: mappings of section overrides, each with a ``name`` (its folder's name)."""
    at = f"{path}, {lines.get(key, 'top level')}"
    if not isinstance(data, list) or not data or not all(isinstance(stage, dict) for stage in data):
        raise LogitGuardError(f"{at}: stages must be a non-empty list of mappings, each with a name")
    names = []
    for i, stage in enumerate(data):
        name = stage.get("name")
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            raise LogitGuardError(f"{at}: stage {i + 1} needs a name of letters, digits, '.', '_' or '-'")
        if name in names:
            raise LogitGuardError(f"{at}: two stages are named {name!r}")
        for reserved in ("output_dir", "continue_from", "stages"):
            if reserved in stage:
                raise LogitGuardError(f"{at}: stage {name!r} sets {reserved}, which LogitGuard sets for each stage")
        names.append(name)
    return data


@dataclass
class RunConfig:
    output_dir: str = ""
    continue_from: str | None = None  # an earlier run's output_dir: train its adapter on (one config per stage)
    stages: list[dict] | None = field(default=None, metadata={"reader": read_stages})  # or a list of stages
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    training: dict[str, Any] = field(  # TrainingArguments fields
        default_factory=lambda: dict(TRAINING_DEFAULTS), metadata={"reader": read_training}
    )
    str_section: STRSection = field(default_factory=STRSection, metadata={"key": "str"})
    monitor: MonitorSection = field(default_factory=MonitorSection)
    selection: SelectionSection = field(default_factory=SelectionSection)

    def validate(self, source: str) -> None:
        """Cross-field checks (each section checks its own fields when built)."""
        for key, value in [("output_dir", self.output_dir), ("model.name_or_path", self.model.name_or_path)]:
            if not value:
                raise LogitGuardError(f"{source}: {key} is required")
        if not self.data.train:
            raise LogitGuardError(f"{source}: data.train is required")
        sel = self.selection
        if sel.fraction > 0 and sel.threshold is not None:
            raise LogitGuardError(f"{source}: give selection.fraction or selection.threshold, not both")
        if sel.rule == "drop-top" and sel.keep is not None:
            raise LogitGuardError(
                f"{source}: selection.keep is the share rule moderate, lowest, highest or random keeps; "
                "drop-top drops selection.fraction or every score at selection.threshold"
            )
        if sel.rule != "drop-top" and (sel.keep is None or sel.fraction > 0 or sel.threshold is not None):
            raise LogitGuardError(f"{source}: selection.rule {sel.rule!r} keeps a share: give selection.keep alone")
        if sel.weights == "aligned" and sel.gradient != "dense" and sel.score in ("gradient-norm", "first-tokens"):
            raise LogitGuardError(
                f"{source}: selection.weights aligned scores with the adapters off, where only the dense gradient "
                "exists; set selection.gradient: dense"
            )
        if self.model.load_in_4bit and not self.lora.enabled:
            raise LogitGuardError(f"{source}: model.load_in_4bit (QLoRA) needs lora.enabled: true")
        if self.str_section.enabled:
            config = self.str_section.str_config()
            if not self.lora.enabled and config.uses_task:
                raise LogitGuardError(
                    f"{source}: str.reference {config.reference!r} needs LoRA: the task-batch reference is the model "
                    "with its adapters disabled, and full fine-tuning has none (it would need a frozen copy of the "
                    "model in memory). Use str.reference: anchors, whose references are cached before training"
                )

    def training_arguments(self, source: str = "run config"):
        """``transformers.TrainingArguments`` of the ``training`` section; its own checks name the section."""
        from transformers import TrainingArguments

        try:
            return TrainingArguments(
                output_dir=str(Path(self.output_dir) / "checkpoints"), remove_unused_columns=False, **self.training
            )
        except (ValueError, TypeError) as e:
            raise LogitGuardError(f"{source}: training: {' '.join(str(e).split())}") from None

    stage_runs: list[RunConfig] = field(default_factory=list, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The config as its YAML mapping (``str:`` under its own name; unset ``continue_from`` and ``stages`` left
        out)."""
        data = section_dict(self)
        data.pop("stage_runs", None)
        return {key: value for key, value in data.items() if not (key in ("continue_from", "stages") and value is None)}


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides and check every field."""
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as e:
        raise LogitGuardError(f"cannot read run config {path}: {e.strerror}") from None
    data, lines = read_yaml_mapping(text, path, "a run config is a mapping of sections")
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise LogitGuardError(f"override {override!r}: expected key=value, e.g. str.weight=0.5")
        section = data
        *parents, leaf = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise LogitGuardError(f"override {override!r}: {part} is not a section")
        try:
            section[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise LogitGuardError(f"override {override!r}: invalid YAML value: {' '.join(str(e).split())}") from None
        lines[key] = f"override {override!r}"
    config = build_section(RunConfig, data, "", path, lines)
    config.validate(str(path))
    if config.stages:
        if config.continue_from:
            raise LogitGuardError(f"{path}: give stages or continue_from, not both")
        config.stage_runs = stage_runs(config, data, path)
    return config


def stage_runs(config: RunConfig, data: dict[str, Any], path: Path) -> list[RunConfig]:
    """The run of each stage: the config's sections with the stage's overrides, in ``OUTPUT_DIR/NN-NAME``, each
    stage continuing from the one before it."""
    base = {key: value for key, value in data.items() if key != "stages"}
    runs: list[RunConfig] = []
    for i, stage in enumerate(config.stages):
        merged = merge(base, {key: value for key, value in stage.items() if key != "name"})
        merged["output_dir"] = str(Path(config.output_dir) / f"{i + 1:02d}-{stage['name']}")
        if runs:
            merged["continue_from"] = runs[-1].output_dir
        where = Path(f"{path} (stage {stage['name']})")
        run = build_section(RunConfig, merged, "", where, {})
        run.validate(str(where))
        runs.append(run)
    return runs


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` written over it, section by section (mappings merged, other values replaced)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
