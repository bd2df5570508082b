"""The public API: every name importable from ``logitguard``, and ``import logitguard`` light."""

import subprocess
import sys

import pytest

import logitguard


def test_every_exported_name_imports():
    assert logitguard.__all__ == sorted(logitguard._EXPORTS)
    for name in logitguard.__all__:
        assert getattr(logitguard, name).__name__ == name


@pytest.mark.parametrize(
    "module",
    [
        "logitguard",
        "logitguard.evaluation.metrics",  # pure functions of strings
        "benchmarks.aligned_sweep",  # only starts build and fine-tuning processes
    ],
)
def test_light_modules_load_no_torch_or_transformers(module):
    code = f"import sys, {module}; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
