"""The type and domain of every setting a user gives: one place says what is allowed and words the error.

A setting, an option or an artifact field of the wrong type (a quoted ``"0.3"`` where a number is asked), outside
its domain, or a float that is not finite (``.nan``, ``.inf``), is refused when it is read, before anything runs or
is written, whichever front end read it (Python, a run config, a framework's YAML). Dataclass fields carry their
domain in their metadata (``field(default=16, metadata=at_least(1))``) and :func:`check_fields` checks every field's
type hint and domain.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from logitguard.errors import LogitGuardError


@dataclass(frozen=True)
class Domain:
    """An interval of numbers (either end may be open or absent); ``integer`` asks for an int."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"


POSITIVE = Domain(0, low_open=True)
AT_LEAST_ONE = Domain(1)
NON_NEGATIVE = Domain(0)
PROBABILITY = Domain(0, 1)
FRACTION_BELOW_ONE = Domain(0, 1, high_open=True)  # a share that must leave something (dropout, selection)


def at_least(low: float) -> dict[str, Domain]:
    """Field metadata: the value must be ``>= low``."""
    return {"domain": Domain(low)}


def within(domain: Domain) -> dict[str, Domain]:
    """Field metadata: the value must lie in ``domain``."""
    return {"domain": domain}


def check_number(value: Any, name: str, domain: Domain | None = None) -> None:
    """Raise a one-line error naming ``name`` when ``value`` (a number, or None for 'unset') is not finite or not
    in ``domain``. Non-numbers pass: their type is checked elsewhere."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise LogitGuardError(f"{name} must be a finite number, got {value}")
    if domain is not None and not domain.contains(value):
        raise LogitGuardError(f"{name} must be {domain.describe()}, got {value}")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of the dataclass ``obj`` against its type hint (an int given for a float becomes that
    float), and every number in it (and in its list fields) against its domain."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in hints and not dataclasses.is_dataclass(value):
            checked = check_type(value, hints[f.name], prefix + f.name)
            if checked is not value:
                object.__setattr__(obj, f.name, checked)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            check_number(item, prefix + f.name, f.metadata.get("domain"))


def check_type(value: Any, hint: Any, key: str, where: str | None = None) -> Any:
    """``value`` if it is of the type ``hint`` (an int where a float is asked is converted); else a one-line error
    naming ``key`` (and ``where`` it was read, e.g. a file and line)."""
    if _matches(value, hint):
        return float(value) if hint is float and isinstance(value, int) else value
    raise LogitGuardError(f"{where + ': ' if where else ''}{key} = {value!r} is not {_describe(hint)}")


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
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, origin) and all(_matches(v, args[0]) for v in value) if args else True
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
    if origin in (list, tuple):
        return f"a {origin.__name__} of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return "null" if hint is type(None) else f"a {getattr(hint, '__name__', hint)}"
