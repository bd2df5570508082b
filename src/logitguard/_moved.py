"""Module paths of LogitGuard 0.1, importable for one more release (until 0.3) with a ``FutureWarning``.

The modules moved into packages grouped by job (``core``, ``artifacts``, ``hosts``, ``evaluation``, ``models``,
``data``, ``cli``, ``lab``); ``import logitguard`` installs a finder that serves each old path as a module whose
names come from the new ones.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED: dict[str, tuple[str, ...]] = {  # old module -> the modules its public names live in now
    "logitguard.regularizer": ("logitguard.core.objective",),
    "logitguard.penalties": ("logitguard.core.penalties",),
    "logitguard.model_parts": ("logitguard.core.model_access", "logitguard.models.adapters"),
    "logitguard.anchors": ("logitguard.core.anchor_cache", "logitguard.artifacts.references"),
    "logitguard.discovery": ("logitguard.core.safety_tokens", "logitguard.artifacts.discovery"),
    "logitguard.preparation": ("logitguard.artifacts.pairs",),
    "logitguard.builtin_prompts": ("logitguard.artifacts.builtin_prompts",),
    "logitguard.str_trainer": ("logitguard.hosts.trainer",),
    "logitguard.str_sft_trainer": ("logitguard.hosts.sft_trainer",),
    "logitguard.custom_loop": ("logitguard.hosts.custom_loop",),
    "logitguard.monitor": ("logitguard.hosts.monitor",),
    "logitguard.checkpoints": ("logitguard.hosts.checkpoints",),
    "logitguard.refusal": ("logitguard.evaluation.verdicts",),
    "logitguard.judges": ("logitguard.evaluation.judges",),
    "logitguard.generation": ("logitguard.evaluation.generation",),
    "logitguard.report": ("logitguard.evaluation.report",),
    "logitguard.prompt_files": ("logitguard.data.prompt_files",),
    "logitguard.run_config": ("logitguard.cli.run_config", "logitguard.settings"),
    "logitguard.cache": ("logitguard.models.cache",),
}


class _Alias(ModuleType):
    """An old module path: each name is looked up in the new modules (imported on first use)."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: use {' or '.join(targets)} (or ``from logitguard import ...``).")
        self._targets = targets

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"module {self.__name__!r} (moved to {', '.join(self._targets)}) has no attribute {attr!r}"
        )


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return _Alias(spec.name, MOVED[spec.name])

    def exec_module(self, module) -> None:
        warnings.warn(
            f"{module.__name__} moved to {' and '.join(MOVED[module.__name__])}; the old path goes in logitguard 0.3",
            FutureWarning,
            stacklevel=2,
        )


def install() -> None:
    """Serve the old paths (once per interpreter)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
