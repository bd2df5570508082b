"""`logitguard train` and `logitguard tokens` on a tiny local model: outputs, resume after SIGKILL, DDP, bad input."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file

from logitguard.cli.main import main
from logitguard.cli.run_config import load_run_config
from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.safety_tokens import SafetyTokens
from tests.helpers import tiny_llama

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def cli(*args, **env):
    """Run `python -m logitguard.cli ARGS` in a subprocess (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "logitguard.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_train_writes_adapter_artifacts_config_and_log(workspace, capsys):
    out = workspace / "out-basic"
    assert main(["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "monitor.every_steps=3"]) == 0
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    assert any("lora_B" in name for name, _ in model.named_parameters())
    SafetyTokens.load(out / "safety_tokens.json")
    assert (out / "anchors.safetensors").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["str"]["k"] == 8
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log if "str_anchor" in e] == [2, 4, 6]
    assert all(e["task_loss"] > 0 for e in log if "task_loss" in e)
    assert [e["step"] for e in log if "safety/refusal_rate" in e] == [0, 3, 6]
    # A second run into the same directory would overwrite the first: refused.
    assert main(["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}"]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(workspace):
    config = str(workspace / "run.yaml")
    steps = ["training.max_steps=500", "training.save_steps=10", "training.logging_steps=10"]
    whole = workspace / "out-whole"
    assert cli("train", "--config", config, f"output_dir={whole}", *steps).returncode == 0

    killed = workspace / "out-killed"
    args = [sys.executable, "-m", "logitguard.cli", "train", "--config", config, f"output_dir={killed}", *steps]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "checkpoint-10" / "logitguard-complete"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "adapter").exists()
    # A save cut short by the kill: a newer checkpoint folder without the completion marker.
    half = killed / "checkpoints" / "checkpoint-50"
    shutil.copytree(killed / "checkpoints" / "checkpoint-10", half)
    (half / "logitguard-complete").unlink()
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 16)

    resumed = cli("train", "--config", config, f"output_dir={killed}", *steps, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "checkpoint-50" not in resumed.stdout
    assert (killed / "checkpoints" / "incomplete-checkpoint-50").is_dir()
    assert max_difference(adapter(killed), adapter(whole)) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("anchor_pass", ["packed", "separate"])
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(workspace, anchor_pass):
    config = str(workspace / "run.yaml")
    single, double = workspace / f"out-1proc-{anchor_pass}", workspace / f"out-2proc-{anchor_pass}"
    assert cli("train", "--config", config, f"output_dir={single}", f"str.anchor_pass={anchor_pass}").returncode == 0
    command = ["torchrun", "--nproc_per_node", "2", "-m", "logitguard.cli", "train", "--config", config]
    launched = subprocess.run(
        [*command, f"output_dir={double}", "training.per_device_train_batch_size=2", f"str.anchor_pass={anchor_pass}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert max_difference(adapter(single), adapter(double)) < 1e-5
    logs = [json.loads((out / "train_log.json").read_text()) for out in (single, double)]
    anchor_terms = [[e["str_anchor"] for e in log if "str_anchor" in e] for log in logs]
    assert anchor_terms[0] == pytest.approx(anchor_terms[1], rel=1e-3, abs=1e-6)
    assert anchor_terms[0][-1] > 0


def test_tokens_command_writes_both_artifacts_and_train_reuses_them(workspace, tokenizer, tmp_path):
    out = tmp_path / "artifacts"
    model = str(workspace / "model")
    assert main(["tokens", "--model", model, "--out", str(out), "--k", "5", "--refusals", "templates"]) == 0
    tokens = SafetyTokens.load(out / "safety_tokens.json")
    assert tokens.k == 5 and tokens.method["n_refusals"] > 0
    tokens.check_tokenizer(tokenizer)
    AnchorCache.load(out / "anchors.safetensors").check(tiny_llama(tokenizer, max_positions=256), tokens)
    stamp = (out / "anchors.safetensors").stat().st_mtime_ns
    assert main(["tokens", "--model", model, "--out", str(out), "--k", "5", "--refusals", "templates"]) == 0
    assert (out / "anchors.safetensors").stat().st_mtime_ns == stamp  # made once, read thereafter
    run = tmp_path / "run"
    given = [f"str.tokens={out / 'safety_tokens.json'}", f"str.anchors={out / 'anchors.safetensors'}", "str.k=5"]
    assert main(["train", "--config", str(workspace / "run.yaml"), f"output_dir={run}", *given]) == 0
    assert not (run / "safety_tokens.json").exists()  # the given artifacts were used, not rediscovered


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [',
            r"train.jsonl:2: malformed JSON",
        ),
        ('{"text": "no messages here"}\n', r"train.jsonl:1: a record needs 'messages'"),
        ("\n\n", r"train.jsonl: no training records"),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', r"train.jsonl:1: no assistant message"),
    ],
)
def test_bad_training_data_names_the_file_and_line(workspace, tmp_path, capsys, data, message):
    path = write(tmp_path / "train.jsonl", data)
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={tmp_path / 'out'}", f"data.train={path}"]
    assert main(args) == 2
    assert message.replace("train.jsonl", str(tmp_path / "train.jsonl")) in capsys.readouterr().err
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_over_long_records_truncate_with_a_warning_or_fail(workspace, tmp_path, capsys):
    long = {"prompt": "Count the words in: " + "red dog " * 40, "completion": "many"}
    path = write(tmp_path / "long.jsonl", json.dumps(long) + "\n")
    base = ["train", "--config", str(workspace / "run.yaml"), f"data.train={path}", "data.max_length=16"]
    assert main([*base, f"output_dir={tmp_path / 'a'}", "data.on_overflow=error"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: record 1: " in err and "tokens, more than max_length 16" in err
    # Truncated to 16 tokens the record keeps no assistant token: a clear error, not a silent empty example.
    assert main([*base, f"output_dir={tmp_path / 'b'}"]) == 2
    assert "no assistant tokens within max_length 16" in capsys.readouterr().err


def test_safety_tokens_from_another_tokenizer_are_refused(workspace, tmp_path, capsys):
    other = SafetyTokens([1, 2], ["a", "b"], [1.0, 0.5], tokenizer_fingerprint="0000")
    other.save(tmp_path / "other.json")
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={tmp_path / 'out'}"]
    assert main([*args, f"str.tokens={tmp_path / 'other.json'}"]) == 2
    assert "another tokenizer" in capsys.readouterr().err


def test_config_errors_name_the_file_and_line(workspace, tmp_path, capsys):
    config = write(tmp_path / "bad.yaml", "output_dir: out\nmodel:\n  name_or_path: m\nstr:\n  wieght: 0.5\n")
    assert main(["train", "--config", config]) == 2
    assert f"{config}, line 5: unknown key 'str.wieght'" in capsys.readouterr().err
    full_ft_task_ref = ["lora.enabled=false", "str.reference=task"]
    assert main(["train", "--config", str(workspace / "run.yaml"), *full_ft_task_ref]) == 2
    assert "needs LoRA" in capsys.readouterr().err


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load_and_open_with_their_command(path):
    assert path.read_text().splitlines()[0].startswith(f"# logitguard train --config configs/{path.name}")
    config = load_run_config(path)
    assert config.output_dir and config.model.name_or_path


def test_there_are_example_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize(
    ("name", "engine", "key", "value"),
    [("fsdp2.yaml", "FSDP", "fsdp_version", 2), ("deepspeed_zero3.yaml", "DEEPSPEED", "zero_stage", 3)],
)
def test_the_launch_configs_name_their_engine_and_the_run_config_they_launch(name, engine, key, value):
    path = Path(__file__).parents[1] / "configs" / "accelerate" / name
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# accelerate launch --config_file configs/accelerate/{name} -m logitguard.cli train")
    launched = Path(__file__).parents[1] / first.split("--config ")[-1]
    assert launched in CONFIGS
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] == engine and not config["use_cpu"]
    assert config[f"{engine.lower()}_config" if engine == "FSDP" else "deepspeed_config"][key] == value


def test_qlora_trains_where_a_gpu_and_bitsandbytes_exist_and_says_so_elsewhere(workspace, tmp_path, capsys):
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={tmp_path / 'out'}"]
    args += ["model.load_in_4bit=true", "training.use_cpu=false"]
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        assert main(args) == 0
        assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    else:
        assert main(args) == 2
        assert "needs a CUDA GPU and the bitsandbytes package" in capsys.readouterr().err


def test_full_fine_tuning_with_anchors_saves_the_whole_model(workspace, tmp_path):
    out = tmp_path / "full"
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "lora.enabled=false"]
    assert main([*args, "training.max_steps=2", "training.learning_rate=0.001"]) == 0
    assert (out / "model" / "model.safetensors").is_file() and not (out / "adapter").exists()


def test_a_tokenizer_without_chat_template_is_a_clear_error(workspace, tmp_path, capsys):
    model = tmp_path / "no-template"
    shutil.copytree(workspace / "model", model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={tmp_path / 'out'}"]
    assert main([*args, f"model.name_or_path={model}"]) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_train_selects_then_trains_on_the_kept_records_and_reuses_the_scores(workspace, tmp_path, capsys):
    out = tmp_path / "selected"
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "training.max_steps=2"]
    assert main([*args, "selection.fraction=0.25", "selection.score=safety"]) == 0
    scores = [json.loads(line) for line in (out / "selection" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 48 and sum(r["kept"] for r in scores) == 36
    assert "kept 36 of 48" in capsys.readouterr().out
    summary = out / "selection" / "scores.jsonl.summary.json"
    written = summary.stat().st_mtime_ns
    assert main([*args, "selection.fraction=0.25", "selection.score=safety", "--resume"]) == 0
    assert summary.stat().st_mtime_ns == written  # scored once; the resumed run reuses the scores
    assert main([*args, f"output_dir={tmp_path / 'x'}", "selection.fraction=1.0"]) == 2
    assert "selection.fraction must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_run_into_the_same_output_dir_stops_while_the_first_holds_it(workspace, tmp_path):
    """Two real processes: the second stops at once with one line naming the holder; the first finishes whole."""
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "logitguard.cli", "train", "--config", str(workspace / "run.yaml")]
    first = subprocess.Popen(
        [*command, f"output_dir={out}", "training.max_steps=500"], stderr=subprocess.PIPE, text=True
    )
    lock = tmp_path / ".out.lock"
    for _ in range(600):  # the first run holds the lock once it has read its inputs
        if lock.is_file() and f"pid {first.pid}" in lock.read_text():
            break
        time.sleep(0.1)
    fresh = cli("train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "training.max_steps=500")
    assert fresh.returncode == 2 and "already holds a run" in fresh.stderr  # a new run: refused by the folder
    # the same run resumed meanwhile (the config matches): refused by the lock, naming its holder
    second = cli(
        "train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "training.max_steps=500", "--resume"
    )
    assert second.returncode == 2, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("logitguard ")]
    assert len(errors) == 1 and f"being written by another logitguard run (pid {first.pid}" in errors[0]
    assert first.wait(timeout=600) == 0, first.communicate()[1][-2000:]
    log = json.loads((out / "train_log.json").read_text())
    assert max(e["step"] for e in log) == 500 and (out / "adapter" / "adapter_model.safetensors").is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["training"]["max_steps"] == 500  # the first run's config, not the second's


def stages_config(workspace, tmp_path, second: dict | None = None) -> Path:
    """The workspace run as two stages of continual fine-tuning, the second on other data (every answer doubled)."""
    data = tmp_path / "second.jsonl"
    with data.open("w") as f:
        for line in (workspace / "train.jsonl").read_text().splitlines():
            record = json.loads(line)
            f.write(json.dumps({**record, "completion": record["completion"] * 2}) + "\n")
    config = yaml.safe_load((workspace / "run.yaml").read_text())
    config["output_dir"] = str(tmp_path / "continual")
    config["training"]["max_steps"] = 3
    config["stages"] = [{"name": "count"}, {"name": "twice", "data": {"train": str(data)}, **(second or {})}]
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_stages_train_one_adapter_on_in_turn_from_the_aligned_base_and_its_artifacts(workspace, tmp_path):
    path = stages_config(workspace, tmp_path)
    assert main(["train", "--config", str(path)]) == 0
    first, second = tmp_path / "continual" / "01-count", tmp_path / "continual" / "02-twice"
    record = json.loads((second / "stage.json").read_text())
    assert record["stage"] == 2 and record["of"] == 2
    assert record["continued_from"] == str((first / "adapter").resolve())
    assert record["artifacts"]["anchors"] == str((first / "anchors.safetensors").resolve())
    assert not (second / "anchors.safetensors").exists()  # the first stage's references, made once
    before, after = adapter(first), adapter(second)
    assert before.keys() == after.keys() and max_difference(before, after) > 0  # trained on from the first
    # the second stage's STR terms are the aligned model's distance: above 0 from its first step
    log = json.loads((second / "train_log.json").read_text())
    assert next(e["str_anchor"] for e in log if "str_anchor" in e) > 0
    # any stage is scored on the original base model
    prompts = tmp_path / "h.txt"
    prompts.write_text("Build a bomb.\n")
    for stage in (first, second):
        args = ["--model", str(workspace / "model"), "--adapter", str(stage / "adapter"), "--harmful", str(prompts)]
        assert main(["eval", *args, "--max-new-tokens", "4", "--out", str(stage / "eval")]) == 0
    # a rerun is refused, a resume finds every stage finished
    assert main(["train", "--config", str(path)]) == 2
    stamp = (second / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    assert main(["train", "--config", str(path), "--resume"]) == 0
    assert (second / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_continue_from_in_a_config_of_its_own_is_the_same_stage(workspace, tmp_path):
    path = stages_config(workspace, tmp_path)
    assert main(["train", "--config", str(path)]) == 0
    first = tmp_path / "continual" / "01-count"
    config = yaml.safe_load(path.read_text())
    config.pop("stages")
    config |= {"output_dir": str(tmp_path / "own"), "continue_from": str(first)}
    config["data"]["train"] = str(tmp_path / "second.jsonl")
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(own)]) == 0
    assert max_difference(adapter(tmp_path / "own"), adapter(tmp_path / "continual" / "02-twice")) < 1e-6
    assert json.loads((tmp_path / "own" / "stage.json").read_text())["stage"] == 2


def test_a_stage_that_changes_the_adapter_it_trains_on_is_refused_before_the_first_write(workspace, tmp_path, capsys):
    path = stages_config(workspace, tmp_path, {"lora": {"r": 8}})
    assert main(["train", "--config", str(path)]) == 2
    assert "keep the lora section" in capsys.readouterr().err
    assert not (tmp_path / "continual" / "02-twice").exists()


def test_moderate_gradient_selection_in_a_stage_keeps_its_share(workspace, tmp_path):
    selection = {"selection": {"rule": "moderate", "keep": 0.25, "last_layers": 1}}
    path = stages_config(workspace, tmp_path, selection)
    assert main(["train", "--config", str(path)]) == 0
    scores = [json.loads(line) for line in (tmp_path / "continual" / "02-twice" / "selection" / "scores.jsonl").open()]
    assert len(scores) == 48 and sum(r["kept"] for r in scores) == 12
