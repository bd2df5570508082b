"""The domain of every number a user gives: one place says what is allowed and words the error.

A setting, an option or an artifact field that is outside its domain, or a float that is not finite (``.nan``,
``.inf``), is refused when it is read, before anything runs or is written. Dataclass fields carry their domain in
their metadata (``field(default=16, metadata=at_least(1))``) and :func:`check_fields` checks them all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

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
    """Check every numeric field of the dataclass ``obj`` (and numbers in its list fields) against its domain."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            check_number(item, prefix + f.name, f.metadata.get("domain"))
