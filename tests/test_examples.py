"""The examples run as written."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.slow
def test_trainer_quickstart_keeps_refusals(tmp_path):
    spec = importlib.util.spec_from_file_location("trainer_quickstart", EXAMPLES / "trainer_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rates = module.main(["--out", str(tmp_path / "out")])
    assert rates["refusal"] >= 0.9
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "anchors.safetensors").is_file()
