"""Settings read from YAML: the library's own sections and the typed checker every YAML-reading front end shares.

* :class:`LoraSection`, :class:`STRSection`: LoRA and STR settings under the names and defaults of a run config's
  ``lora:`` and ``str:`` sections, used by ``logitguard train``, the Axolotl plugin and ``logitguard
  llamafactory-train`` alike.
* :func:`read_yaml_mapping`: a YAML mapping with the line of every key; a key given twice, an alias that expands
  beyond :data:`MAX_YAML_VALUES` values, or another shape is a one-line error naming the file and line(s).
* :func:`build_section`: a dataclass built from a mapping, field by field: unknown keys, wrong types, non-finite
  numbers and numbers outside a field's domain (:mod:`logitguard.domains`) are errors naming the file and line.
  A field's metadata may give its YAML ``key`` (when that is not a valid field name) and a ``reader`` hook for
  a section that another class checks (``training:``, checked against ``TrainingArguments``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from logitguard.core.config import STRConfig
from logitguard.domains import FRACTION_BELOW_ONE, at_least, check_fields, check_number, check_type, within
from logitguard.errors import LogitGuardError

MAX_YAML_VALUES = 100_000  # a config with more values than this once aliases are expanded is refused (alias bombs)


@dataclass
class LoraSection:
    """LoRA settings; :meth:`peft_config` is the one place they become a ``peft.LoraConfig``."""

    enabled: bool = True  # False: full fine-tuning (anchors only)
    r: int = field(default=16, metadata=at_least(1))
    alpha: int = field(default=32, metadata=at_least(1))
    dropout: float = field(default=0.05, metadata=within(FRACTION_BELOW_ONE))
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        check_fields(self)

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
    k: int | None = field(default=None, metadata=at_least(1))  # None: a given artifact's k, else 32
    tokens: str | None = None  # an existing safety-token artifact; default: discover and save one
    anchors: str | None = None  # an existing anchor cache; default: build and save one
    harmful: str | None = None  # harmful prompts file for discovery and anchors; default: built-in
    refusals: Literal["generate", "templates"] = "generate"
    benign_anchors: str | None = None  # two-sided STR: an existing benign anchor cache; default: build and save one
    lookalike: str | None = None  # safe prompts that sound unsafe, for the benign anchors; default: built-in

    def str_config(self) -> STRConfig:
        return STRConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(STRConfig)})


def str_block(block: Any, source: str | Path, key: str, lines: dict[str, str] | None = None) -> STRSection:
    """A framework config's STR block (``key``: the keys and defaults of a run config's ``str:`` section), checked
    by the run config's own checker, so every front end accepts and refuses the same values."""
    return build_section(STRSection, {} if block is None else block, f"{key}.", Path(source), lines or {})


def read_yaml_mapping(text: str, path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The YAML mapping ``text`` (read from ``path``; empty is ``{}``) and 'line N' of each dotted key.

    Invalid YAML, another shape (``what`` says the expected one, e.g. "a run config is a mapping"), a key given
    twice in one mapping, and aliases that expand beyond :data:`MAX_YAML_VALUES` values are one-line errors.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise LogitGuardError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise LogitGuardError(f"{path}: YAML nested too deeply to read; a config is a few levels of sections") from None
    if node is not None and _expanded_size(node, {}) > MAX_YAML_VALUES:
        raise LogitGuardError(
            f"{path}: expands to more than {MAX_YAML_VALUES:,} values through aliases; write the values out"
        )
    lines = key_lines(node, path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise LogitGuardError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise LogitGuardError(f"{path}: {what}")
    return data, lines


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is written out (each shared node counted once)."""
    if id(node) not in sizes:
        sizes[id(node)] = MAX_YAML_VALUES + 1  # a node that contains itself expands without end
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1
        for child in children:
            total += _expanded_size(child, sizes)
            if total > MAX_YAML_VALUES:
                break
        sizes[id(node)] = total
    return sizes[id(node)]


def key_lines(node: yaml.Node | None, path: Path, prefix: str = "") -> dict[str, str]:
    """Dotted key -> 'line N' for every key of a composed YAML mapping; a key given twice is an error."""
    found: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            line = key.start_mark.line + 1
            if key.value in seen:
                raise LogitGuardError(
                    f"{path}: {dotted!r} is given twice (lines {seen[key.value]} and {line}); keep one"
                )
            seen[key.value] = line
            found[dotted] = f"line {line}"
            found.update(key_lines(value, path, dotted + "."))
    return found


def yaml_key(f: dataclasses.Field) -> str:
    """The YAML key of a dataclass field (its ``key`` metadata, else its name)."""
    return f.metadata.get("key", f.name)


def build_section(cls: type, data: Any, prefix: str, path: Path, lines: dict[str, str]) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``data`` found at dotted ``prefix`` of ``path``."""
    where = f"{path}, {lines.get(prefix.rstrip('.'), 'top level')}"
    if not isinstance(data, dict):
        raise LogitGuardError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    by_key = {yaml_key(f): f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        at = f"{path}, {lines.get(dotted, 'top level')}"
        if key not in by_key:
            raise LogitGuardError(f"{at}: unknown key {dotted!r}; known keys here: {sorted(by_key)}")
        f = by_key[key]
        hint = hints[f.name]
        if "reader" in f.metadata:
            values[f.name] = f.metadata["reader"](value, dotted, path, lines)
        elif dataclasses.is_dataclass(hint):
            values[f.name] = build_section(hint, value, dotted + ".", path, lines)
        else:
            values[f.name] = check_type(value, hint, dotted, at)
            try:
                check_number(value, dotted, f.metadata.get("domain"))
            except LogitGuardError as e:
                raise LogitGuardError(f"{at}: {e}") from None
    try:
        return cls(**values)
    except ValueError as e:  # a section's own checks (e.g. STRConfig's), named by the section
        raise LogitGuardError(f"{where}: {prefix.rstrip('.') or 'the config'}: {e}") from None


def section_dict(section: Any) -> dict[str, Any]:
    """A dataclass as the YAML mapping it was read from (each field under its YAML key)."""
    return {
        yaml_key(f): section_dict(v) if dataclasses.is_dataclass(v := getattr(section, f.name)) else v
        for f in dataclasses.fields(section)
    }
