"""The demo: plain LoRA SFT erodes refusals, STR keeps them (slow: the default toy model and budget); its outputs
and command-line checks on the small toy (fast)."""

import json
from dataclasses import replace

import pytest

from logitguard.cli.main import main
from logitguard.lab.demo import DemoConfig, run_demo
from tests.helpers import SMALL_RECIPE


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(DemoConfig(), out)


@pytest.mark.slow
def test_str_keeps_refusals_that_plain_sft_erodes(demo_run):
    _, summary = demo_run
    aligned, sft, str_ = (summary["models"][name] for name in ("aligned", "sft", "str"))
    assert aligned["harmful_refusal"] >= 0.9
    assert aligned["benign_over_refusal"] <= 0.05
    assert sft["harmful_refusal"] <= aligned["harmful_refusal"] - 0.5
    # Refusals that end: a refusal that goes on to comply does not count.
    assert str_["harmful_refusal"] >= 0.9 * aligned["harmful_refusal"]
    assert str_["harmful_refusal"] - sft["harmful_refusal"] >= 0.5
    assert str_["benign_over_refusal"] <= 0.05
    # One seed on one machine: float differences between CPUs move a single run by a few points (the
    # benchmarks give means over seeds), but a penalty that blocked the task would fall far below this.
    assert str_["task_accuracy"] >= sft["task_accuracy"] - 0.1
    assert sft["task_accuracy"] >= aligned["task_accuracy"] + 0.5
    # Fine-tuning itself may cost a held-out skill (at seed 0 both runs count some five-word lists as "four"):
    # the penalty must cost nothing beyond what plain SFT loses.
    assert str_["benign_skills"] >= sft["benign_skills"] - 0.05


def test_demo_writes_its_artifacts(tmp_path, small_toy):
    config = DemoConfig(recipe=SMALL_RECIPE, n_anchor_prompts=64, n_discovery_benign=32)
    config = replace(config, finetune=replace(config.finetune, steps=4, monitor_every=2, logging_steps=2))
    summary = run_demo(config, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["models"]) == {"aligned", "sft", "str"} == set(summary["models"])
    for name in ("sft", "str"):
        assert [c["step"] for c in saved["refusal_curves"][name]] == [0, 2, 4]
        assert (tmp_path / name / "adapter" / "adapter_model.safetensors").exists()
        assert {"harmful_refusal", "harmful_refusal_opening", "task_accuracy", "step_time_ms"} <= set(
            saved["models"][name]
        )
    history = json.loads((tmp_path / "str" / "history.json").read_text())
    assert [e["step"] for e in history if "str_anchor" in e] == [2, 4]
    assert (tmp_path / "refusal_curve.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "report.md").read_text()
    assert "| str |" in report and "refusal_curve.png" in report and "refusal opening only" in report
    assert (tmp_path / "safety_tokens.json").exists() and (tmp_path / "anchors.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--penalty", "huber"], "unknown penalty 'huber'"),
        (["--weight", "-1"], "--weight: must be >= 0, got -1.0"),
        (["--k", "0"], "--k: must be >= 1, got 0"),
    ],
)
def test_bad_options_fail_fast_with_a_clear_message(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_directory_fails_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file" / "out")]) == 2
    assert "file" in capsys.readouterr().err


def test_cli_lists_commands_and_rejects_unknown_ones(capsys):
    assert main([]) == 0
    assert {"demo", "tokens", "train"} <= set(capsys.readouterr().out.split())
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
