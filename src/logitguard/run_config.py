"""The configuration of ``logitguard train``: YAML sections as dataclasses, checked with file and line.

A run config has the sections ``model``, ``data``, ``lora``, ``training``,
``str``, ``monitor`` and ``selection`` plus ``output_dir``; ``key=value`` overrides use dotted keys
(``str.weight=0.5``) and YAML values. Unknown keys and wrong types are errors
that name the file and line (or the override).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from logitguard.regularizer import STRConfig


@dataclass
class ModelSection:
    name_or_path: str = ""
    revision: str | None = None
    dtype: str = "auto"
    chat_template: str | None = None  # a Jinja file or string replacing the tokenizer's template
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
    enabled: bool = True  # False: full fine-tuning (anchors only; see the docs)
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainingSection:
    max_steps: int = -1  # -1: train for `epochs`
    epochs: float = 1.0
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_steps: float = 0.03  # steps, or a fraction of all steps when below 1 (as in TrainingArguments)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int = 2
    seed: int = 0
    report_to: list[str] = field(default_factory=list)  # e.g. [tensorboard] or [wandb]
    use_cpu: bool = False


@dataclass
class SafetySection(STRConfig):
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
    max_new_tokens: int = 16


@dataclass
class SelectionSection:
    fraction: float = 0.0  # 0: off; else the share of training samples dropped before training (highest scores)
    score: Literal["gradient-norm", "safety"] = "gradient-norm"
    batch_size: int = 8


@dataclass
class RunConfig:
    output_dir: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    str: SafetySection = field(default_factory=SafetySection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    selection: SelectionSection = field(default_factory=SelectionSection)

    def validate(self, source: str) -> None:
        """Cross-field checks (each section checks its own fields when built)."""
        for key, value in [("output_dir", self.output_dir), ("model.name_or_path", self.model.name_or_path)]:
            if not value:
                raise ValueError(f"{source}: {key} is required")
        if not self.data.train:
            raise ValueError(f"{source}: data.train is required")
        if self.data.max_length <= 0:
            raise ValueError(f"{source}: data.max_length must be > 0")
        if not 0 <= self.selection.fraction < 1:
            raise ValueError(f"{source}: selection.fraction must be in [0, 1) (0 turns selection off)")
        if self.selection.batch_size <= 0:
            raise ValueError(f"{source}: selection.batch_size must be > 0")
        if self.monitor.every_steps < 0:
            raise ValueError(f"{source}: monitor.every_steps must be >= 0 (0 turns the monitor off)")
        if self.training.save_total_limit < 2:
            raise ValueError(f"{source}: training.save_total_limit must be >= 2 so a complete checkpoint survives")
        if self.str.enabled:
            config = self.str.str_config()
            if not self.lora.enabled and config.uses_task:
                raise ValueError(
                    f"{source}: str.reference {config.reference!r} needs LoRA: the task-batch reference is the model "
                    "with its adapters disabled, and full fine-tuning has none (it would need a frozen copy of the "
                    "model in memory). Use str.reference: anchors, whose references are cached before training"
                )
            if self.model.load_in_4bit and not self.lora.enabled:
                raise ValueError(f"{source}: model.load_in_4bit (QLoRA) needs lora.enabled: true")
            if self.str.k <= 0:
                raise ValueError(f"{source}: str.k must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides and check every field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read run config {path}: {e.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run config is a mapping of sections")
    lines = _key_lines(node)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r}: expected key=value, e.g. str.weight=0.5")
        section = data
        *parents, leaf = key.split(".")
        for part in parents:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise ValueError(f"override {override!r}: {part} is not a section")
        section[leaf] = yaml.safe_load(value)
        lines[key] = f"override {override!r}"
    config = _build(RunConfig, data, "", path, lines)
    config.validate(str(path))
    return config


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, str]:
    """Dotted key -> 'line N' for every key of a composed YAML mapping."""
    found: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            found[dotted] = f"line {key.start_mark.line + 1}"
            found.update(_key_lines(value, dotted + "."))
    return found


def _build(cls: type, data: Any, prefix: str, path: Path, lines: dict[str, str]) -> Any:
    where = f"{path}, {lines.get(prefix.rstrip('.'), 'top level')}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        at = f"{path}, {lines.get(dotted, 'top level')}"
        if key not in fields:
            raise ValueError(f"{at}: unknown key {dotted!r}; known keys here: {sorted(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, dotted + ".", path, lines)
        else:
            values[key] = _check_type(value, hint, dotted, at)
    try:
        return cls(**values)
    except ValueError as e:  # a section's own checks (e.g. STRConfig's)
        raise ValueError(f"{where}: {prefix.rstrip('.') or 'the config'}: {e}") from None


def _check_type(value: Any, hint: Any, key: str, where: str) -> Any:
    if _matches(value, hint):
        return float(value) if hint is float and isinstance(value, int) else value
    raise ValueError(f"{where}: {key} = {value!r} is not {_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else f"a {hint.__name__}"
