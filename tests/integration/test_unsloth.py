"""STR's TRL trainer on Unsloth's CPU path (tests/integration/unsloth_sft.py run in Unsloth's venv).

Run: LOGITGUARD_UNSLOTH_PYTHON=$(bash tests/integration/make_venv.sh unsloth) python -m pytest -m integration
(skipped when the variable is unset; .ci/run sets it).
"""

import json
import os
from pathlib import Path

import pytest

from tests.helpers import framework_workspace, run_python

pytestmark = pytest.mark.integration
PYTHON = os.environ.get("LOGITGUARD_UNSLOTH_PYTHON")
if not PYTHON:
    pytest.skip("set LOGITGUARD_UNSLOTH_PYTHON=$(bash tests/integration/make_venv.sh unsloth)", allow_module_level=True)


def test_str_terms_are_logged_under_unsloth(tmp_path, tokenizer):
    workspace = framework_workspace(tmp_path, tokenizer)
    done = run_python(PYTHON, str(Path(__file__).with_name("unsloth_sft.py")), str(workspace), str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unsloth" in (done.stdout + done.stderr).lower()  # Unsloth announced itself: its patches are in
    logs = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(logs) == 4 and all("str_anchor" in log and "task_loss" in log for log in logs)
    assert all(log["str_anchor"] >= 0 for log in logs) and any(log["str_anchor"] > 0 for log in logs)
