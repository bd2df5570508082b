"""The public API: every name importable from ``logitguard``, and ``import logitguard`` light."""

import subprocess
import sys

import logitguard


def test_every_exported_name_imports():
    assert logitguard.__all__ == sorted(logitguard._EXPORTS)
    for name in logitguard.__all__:
        assert getattr(logitguard, name).__name__ == name


def test_import_logitguard_loads_no_torch_or_transformers():
    code = "import sys, logitguard; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
