"""The configuration of ``logitguard train``: YAML sections as dataclasses, checked with file and line.

A run config has the sections ``model``, ``data``, ``lora``, ``training``, ``str``, ``monitor`` and
``selection`` plus ``output_dir``; ``key=value`` overrides use dotted keys (``str.weight=0.5``) and YAML
values. ``training`` takes ``transformers.TrainingArguments`` fields under their own names, checked against
that class's own field types; the other sections are LogitGuard's. Unknown keys and wrong types are errors
that name the file and line (or the override).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from logitguard.errors import LogitGuardError
from logitguard.regularizer import STRConfig


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
    max_length: int = 1024
    on_overflow: Literal["truncate", "error"] = "truncate"


@dataclass
class LoraSection:
    """LoRA settings; :meth:`peft_config` is the one place they become a ``peft.LoraConfig``."""

    enabled: bool = True  # False: full fine-tuning (anchors only)
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def peft_config(self):
        """The ``peft.LoraConfig`` of these settings (for ``train``, ``select``, the demo and the benchmarks)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


@dataclass
class STRSection(STRConfig):
    """The ``str`` section: :class:`STRConfig`'s fields plus whether STR is on and where its artifacts come from."""

    enabled: bool = True  # False: plain SFT (the baseline)
    k: int = 32
    tokens: str | None = None  # an existing safety-token artifact; default: discover and save one
    anchors: str | None = None  # an existing anchor cache; default: build and save one
    harmful: str | None = None  # harmful prompts file for discovery and anchors; default: built-in
    refusals: Literal["generate", "templates"] = "generate"

    def str_config(self) -> STRConfig:
        return STRConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(STRConfig)})


@dataclass
class MonitorSection:
    every_steps: int = 0  # 0: off; else the refusal rate is measured and logged every this many steps
    prompts: str | None = None  # held-out harmful prompts file; default: built-in ones kept apart from discovery
    min_refusal: float | None = None
    action: Literal["warn", "stop"] = "warn"
    max_new_tokens: int = 64  # long enough to see whether a refusal goes on to comply


@dataclass
class SelectionSection:
    fraction: float = 0.0  # the share of training samples dropped before training (highest scores); 0: off
    threshold: float | None = None  # or: drop every sample scoring at least this (e.g. 0.1 with score: refusal)
    score: Literal["gradient-norm", "safety", "first-tokens", "refusal"] = "gradient-norm"
    batch_size: int = 8

    @property
    def enabled(self) -> bool:
        return self.fraction > 0 or self.threshold is not None


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


@dataclass
class RunConfig:
    output_dir: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    training: dict[str, Any] = field(default_factory=lambda: dict(TRAINING_DEFAULTS))  # TrainingArguments fields
    str: STRSection = field(default_factory=STRSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    selection: SelectionSection = field(default_factory=SelectionSection)

    def validate(self, source: str) -> None:
        """Cross-field checks (each section checks its own fields when built)."""
        for key, value in [("output_dir", self.output_dir), ("model.name_or_path", self.model.name_or_path)]:
            if not value:
                raise LogitGuardError(f"{source}: {key} is required")
        if not self.data.train:
            raise LogitGuardError(f"{source}: data.train is required")
        if self.data.max_length <= 0:
            raise LogitGuardError(f"{source}: data.max_length must be > 0")
        if not 0 <= self.selection.fraction < 1:
            raise LogitGuardError(f"{source}: selection.fraction must be in [0, 1) (0 turns selection off)")
        if self.selection.fraction > 0 and self.selection.threshold is not None:
            raise LogitGuardError(f"{source}: give selection.fraction or selection.threshold, not both")
        if self.selection.batch_size <= 0:
            raise LogitGuardError(f"{source}: selection.batch_size must be > 0")
        if self.monitor.every_steps < 0:
            raise LogitGuardError(f"{source}: monitor.every_steps must be >= 0 (0 turns the monitor off)")
        limit = self.training.get("save_total_limit")
        if limit is not None and limit < 2:
            raise LogitGuardError(
                f"{source}: training.save_total_limit must be >= 2 (or null) so a complete checkpoint survives"
            )
        if self.model.load_in_4bit and not self.lora.enabled:
            raise LogitGuardError(f"{source}: model.load_in_4bit (QLoRA) needs lora.enabled: true")
        if self.str.enabled:
            config = self.str.str_config()
            if not self.lora.enabled and config.uses_task:
                raise LogitGuardError(
                    f"{source}: str.reference {config.reference!r} needs LoRA: the task-batch reference is the model "
                    "with its adapters disabled, and full fine-tuning has none (it would need a frozen copy of the "
                    "model in memory). Use str.reference: anchors, whose references are cached before training"
                )
            if self.str.k <= 0:
                raise LogitGuardError(f"{source}: str.k must be > 0")

    def training_arguments(self, source: str = "run config"):
        """``transformers.TrainingArguments`` of the ``training`` section; its own checks name the section."""
        from transformers import TrainingArguments

        try:
            return TrainingArguments(
                output_dir=str(Path(self.output_dir) / "checkpoints"), remove_unused_columns=False, **self.training
            )
        except (ValueError, TypeError) as e:
            raise LogitGuardError(f"{source}: training: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides and check every field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LogitGuardError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise LogitGuardError(f"cannot read run config {path}: {e.strerror}") from None
    data, lines = yaml_mapping(text, path, "a run config is a mapping of sections")
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
            raise LogitGuardError(f"override {override!r}: invalid YAML value: {e}") from None
        lines[key] = f"override {override!r}"
    config = build_section(RunConfig, data, "", path, lines)
    config.validate(str(path))
    return config


def yaml_mapping(text: str, path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The YAML mapping ``text`` (read from ``path``; empty is ``{}``) and 'line N' of each dotted key; invalid YAML
    or another shape is a one-line error (``what`` says the shape, e.g. "a run config is a mapping")."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise LogitGuardError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LogitGuardError(f"{path}: {what}")
    return data, key_lines(node)


def key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, str]:
    """Dotted key -> 'line N' for every key of a composed YAML mapping."""
    found: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            found[dotted] = f"line {key.start_mark.line + 1}"
            found.update(key_lines(value, dotted + "."))
    return found


def build_section(cls: type, data: Any, prefix: str, path: Path, lines: dict[str, str]) -> Any:
    where = f"{path}, {lines.get(prefix.rstrip('.'), 'top level')}"
    if not isinstance(data, dict):
        raise LogitGuardError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        at = f"{path}, {lines.get(dotted, 'top level')}"
        if key not in fields:
            raise LogitGuardError(f"{at}: unknown key {dotted!r}; known keys here: {sorted(fields)}")
        hint = hints[key]
        if cls is RunConfig and key == "training":
            values[key] = _training_section(value, path, lines)
        elif dataclasses.is_dataclass(hint):
            values[key] = build_section(hint, value, dotted + ".", path, lines)
        else:
            values[key] = _check_type(value, hint, dotted, at)
    try:
        return cls(**values)
    except ValueError as e:  # a section's own checks (e.g. STRConfig's)
        raise LogitGuardError(f"{where}: {prefix.rstrip('.') or 'the config'}: {e}") from None


def _training_section(data: Any, path: Path, lines: dict[str, str]) -> dict[str, Any]:
    """The ``training`` section checked field by field against ``TrainingArguments``, with LogitGuard's defaults."""
    from transformers import TrainingArguments

    if not isinstance(data, dict):
        raise LogitGuardError(f"{path}, {lines.get('training', 'top level')}: training must be a mapping")
    hints = typing.get_type_hints(TrainingArguments)
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    checked = dict(TRAINING_DEFAULTS)
    for key, value in data.items():
        at = f"{path}, {lines.get(f'training.{key}', 'top level')}"
        if key in TRAINING_RESERVED:
            raise LogitGuardError(f"{at}: training.{key} is set by LogitGuard: {TRAINING_RESERVED[key]}")
        if key not in known:
            hint = f"; did you mean {RENAMED[key]!r}?" if key in RENAMED else ""
            raise LogitGuardError(
                f"{at}: unknown key 'training.{key}': not a transformers.TrainingArguments field{hint}"
            )
        checked[key] = _check_type(value, hints[key], f"training.{key}", at)
    return checked


def _check_type(value: Any, hint: Any, key: str, where: str) -> Any:
    if _matches(value, hint):
        return float(value) if hint is float and isinstance(value, int) else value
    raise LogitGuardError(f"{where}: {key} = {value!r} is not {_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        enums = [a for a in typing.get_args(hint) if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # `SchedulerType | str`: the string must name a member
            return any(_matches(value, e) for e in enums)
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {member.value for member in hint}
    return isinstance(hint, type) and isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        enums = [a for a in typing.get_args(hint) if isinstance(a, type) and issubclass(a, enum.Enum)]
        return " or ".join(_describe(a) for a in (enums or typing.get_args(hint)))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return "null" if hint is type(None) else f"a {getattr(hint, '__name__', hint)}"
