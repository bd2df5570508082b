"""Bad input, careless or hostile, across the command line: one test per input.

Each must end in one line on stderr naming the path or field (exit code 2, no traceback), never lose data a user
already has, and never give a silently wrong result. Covered: 104 bad inputs (the count is checked below).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from logitguard.cli.main import main
from logitguard.core.safety_tokens import SafetyTokens, tokenizer_fingerprint
from logitguard.errors import LogitGuardError
from logitguard.io import atomic_directory, recover_directory, set_aside_folder
from tests.helpers import tiny_llama

COVERED = 104
CASES: dict[str, int] = {}


def bad_input(test):
    """Register a test as the bad inputs it covers: one, or one per parameter set when it is parametrized."""
    marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    CASES[test.__name__] = len(marks[0].args[1]) if marks else 1
    return test


def one_line_error(capsys, *fragments: str) -> str:
    """The command's stderr: one line (progress bars aside) holding every fragment, and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("logitguard ")]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def train(workspace, out, *overrides) -> int:
    return main(["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", *overrides])


def select(workspace, *args) -> int:
    return main(["select", "--model", str(workspace / "model"), "--lora-r", "4", *args])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- data a user already has is never lost -------------------------------------------------------------------


@bad_input
def test_select_out_equal_to_the_data_is_refused(workspace, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    shutil.copy(workspace / "train.jsonl", data)
    before = data.read_bytes()
    assert select(workspace, "--data", str(data), "--out", str(data)) == 2
    one_line_error(capsys, "--out", "same file as --data")
    assert data.read_bytes() == before


@bad_input
def test_select_scores_equal_to_the_data_is_refused(workspace, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    shutil.copy(workspace / "train.jsonl", data)
    before = data.read_bytes()
    assert select(workspace, "--data", str(data), "--out", str(tmp_path / "kept.jsonl"), "--scores", str(data)) == 2
    one_line_error(capsys, "--scores", "same file as --data")
    assert data.read_bytes() == before


@bad_input
def test_eval_responses_inside_its_own_out_folder_are_refused(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    responses = write(out / "harmful.jsonl", json.dumps({"prompt": "a", "response": "I cannot."}) + "\n")
    before = responses.read_text()
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 2
    one_line_error(capsys, "--responses", "inside --out")
    assert responses.read_text() == before


@bad_input
def test_eval_out_holding_other_files_is_refused(tmp_path, capsys):
    responses = write(tmp_path / "r.jsonl", json.dumps({"prompt": "a", "response": "I cannot."}) + "\n")
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 2
    one_line_error(capsys, "holds files that logitguard eval did not write", "adapter")
    assert (out / "adapter").is_dir()


@bad_input
def test_train_into_a_folder_with_a_users_adapter_but_no_run_is_refused(workspace, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "adapter").mkdir(parents=True)
    write(out / "adapter" / "adapter_model.safetensors", "weights")
    write(out / "train_log.json", "[]")
    assert train(workspace, out) == 2
    one_line_error(capsys, "holds files that logitguard train did not write", "adapter")
    assert (out / "adapter" / "adapter_model.safetensors").read_text() == "weights"
    assert (out / "train_log.json").read_text() == "[]" and not (out / "config.yaml").exists()


@bad_input
def test_a_kill_between_setting_aside_and_renaming_in_loses_no_folder(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        write(tmp / "weights", "v1")
    target.rename(set_aside_folder(target) / "old")  # what a kill right after the rename-aside leaves
    assert not target.exists()
    recover_directory(target)
    assert (target / "weights").read_text() == "v1"
    with atomic_directory(target) as tmp:  # and a later replacement works as usual
        write(tmp / "weights", "v2")
    assert (target / "weights").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


# --- no silently wrong result ----------------------------------------------------------------------------------


@bad_input
def test_select_scores_of_data_edited_in_place_are_not_reused(workspace, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    lines = (workspace / "train.jsonl").read_text().splitlines()
    write(data, "\n".join(lines) + "\n")
    out = ["--data", str(data), "--out", str(tmp_path / "kept.jsonl"), "--fraction", "0.25"]
    assert select(workspace, *out) == 0
    write(data, "\n".join(reversed(lines)) + "\n")  # reordered in place: same path, same size
    assert select(workspace, *out) == 2
    one_line_error(capsys, "scores of another model, data or scoring setting")


@bad_input
def test_select_scores_of_another_model_at_the_same_path_are_not_reused(workspace, tmp_path, capsys, tokenizer):
    from tests.helpers import tiny_llama

    model = tmp_path / "model"
    shutil.copytree(workspace / "model", model)
    out = ["--data", str(workspace / "train.jsonl"), "--out", str(tmp_path / "kept.jsonl")]
    assert main(["select", "--model", str(model), "--lora-r", "4", *out]) == 0
    other = tiny_llama(tokenizer, max_positions=256)
    torch.manual_seed(1)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.normal_()
    other.save_pretrained(model)
    assert main(["select", "--model", str(model), "--lora-r", "4", *out]) == 2
    one_line_error(capsys, "scores of another model")


@bad_input
def test_a_chat_template_path_that_does_not_exist_is_an_error_not_the_template(workspace, tmp_path, capsys):
    assert train(workspace, tmp_path / "out", f"model.chat_template={tmp_path / 'missing.jinja'}") == 2
    one_line_error(capsys, "chat template: no such file", "missing.jinja")
    assert not (tmp_path / "out").exists()


@bad_input
def test_an_adapter_trained_on_another_base_model_is_refused(workspace, tmp_path, capsys, tokenizer):
    from logitguard.models import save_adapter
    from tests.helpers import lora, tiny_llama

    other = tiny_llama(tokenizer, max_positions=256)
    with torch.no_grad():
        other.model.layers[0].self_attn.q_proj.weight.add_(0.5)
    save_adapter(lora(other), tmp_path / "adapter")
    responses = ["--model", str(workspace / "model"), "--adapter", str(tmp_path / "adapter")]
    assert main(["eval", *responses, "--limit", "1", "--max-new-tokens", "2", "--out", str(tmp_path / "e")]) == 2
    one_line_error(capsys, "trained on another base model")
    assert not (tmp_path / "e").exists()


@bad_input
@pytest.mark.parametrize(("ids", "message"), [([3, -1], "non-negative"), ([3, 3], "distinct")])
def test_safety_tokens_with_a_negative_or_repeated_id_are_refused(workspace, tmp_path, capsys, tokenizer, ids, message):
    path = tmp_path / "tokens.json"
    raw = {"ids": ids, "tokens": ["a", "b"], "scores": [1.0, 0.5], "tokenizer_fingerprint": "x", "version": 1}
    write(path, json.dumps(raw))
    assert train(workspace, tmp_path / "out", f"str.tokens={path}") == 2
    one_line_error(capsys, str(path), message)


@bad_input
def test_safety_token_ids_beyond_the_vocabulary_are_refused(workspace, tmp_path, capsys, tokenizer):
    path = tmp_path / "tokens.json"
    SafetyTokens([3, len(tokenizer) + 5], ["a", "b"], [1.0, 0.5], tokenizer_fingerprint(tokenizer)).save(path)
    assert train(workspace, tmp_path / "out", f"str.tokens={path}") == 2
    one_line_error(capsys, "outside the tokenizer")


@bad_input
def test_reusing_an_eval_folder_leaves_no_file_of_the_earlier_run(tmp_path):
    both = write(
        tmp_path / "both.jsonl",
        json.dumps({"prompt": "a", "response": "I cannot."})
        + "\n"
        + json.dumps({"prompt": "b", "response": "Sure.", "kind": "benign"})
        + "\n",
    )
    out = tmp_path / "eval"
    assert main(["eval", "--responses", str(both), "--out", str(out)]) == 0
    assert (out / "benign.jsonl").exists()
    harmful_only = write(tmp_path / "h.jsonl", json.dumps({"prompt": "a", "response": "Sure."}) + "\n")
    assert main(["eval", "--responses", str(harmful_only), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".logitguard.json", "harmful.jsonl", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["harmful_refusal"] == 0.0


@bad_input
def test_resume_of_a_finished_run_trains_nothing(workspace, tmp_path, capsys):
    out = tmp_path / "done"
    assert train(workspace, out) == 0
    stamp = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    assert train(workspace, out, "--resume") == 0
    assert "holds a finished run" in capsys.readouterr().out
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


@bad_input
def test_report_of_a_training_log_that_is_not_a_list_is_an_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "train_log.json", json.dumps({"loss": 1.0}))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    one_line_error(capsys, "train_log.json", "a training log must be a JSON array")


@bad_input
def test_report_tells_apart_two_runs_with_the_same_folder_name(tmp_path, capsys):
    for parent, rate in (("a", 0.2), ("b", 0.9)):
        (tmp_path / parent / "sft").mkdir(parents=True)
        write(tmp_path / parent / "sft" / "summary.json", json.dumps({"harmful_refusal": rate}))
    runs = [str(tmp_path / "a" / "sft"), str(tmp_path / "b" / "sft")]
    assert main(["report", *runs, "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "| a/sft | 20.0% |" in out and "| b/sft | 90.0% |" in out


# --- a one-line error, not a traceback ---------------------------------------------------------------------------


@bad_input
def test_an_output_dir_that_is_a_file(workspace, tmp_path, capsys):
    write(tmp_path / "taken", "x")
    assert train(workspace, tmp_path / "taken") == 2
    one_line_error(capsys, "taken")


@bad_input
def test_an_output_folder_under_a_file(tmp_path, capsys):
    write(tmp_path / "file", "x")
    responses = write(tmp_path / "r.jsonl", json.dumps({"prompt": "a", "response": "b"}) + "\n")
    assert main(["eval", "--responses", str(responses), "--out", str(tmp_path / "file" / "eval")]) == 2
    one_line_error(capsys, "file")


@bad_input
def test_a_misspelled_local_data_path_is_not_read_as_a_dataset_name(workspace, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert train(workspace, tmp_path / "out", f"data.train={tmp_path / 'data' / 'trian.jsonl'}") == 2
    one_line_error(capsys, "no such file", "trian.jsonl")


@bad_input
def test_a_misspelled_prompt_path_without_suffix_is_not_read_as_a_dataset_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert main(["eval", "--model", "unused", "--harmful", "data/harmfull", "--out", "eval"]) == 2
    one_line_error(capsys, "data/harmfull", "no such prompt file")


@bad_input
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(workspace, out) == 0
    shutil.rmtree(out / "adapter")
    (out / "train_log.json").unlink()
    newest = out / "checkpoints" / "checkpoint-6"
    write(newest / "adapter_model.safetensors", "garbage")  # marked complete, damaged since
    assert train(workspace, out, "--resume") == 0
    captured = capsys.readouterr()
    assert "unreadable" in captured.err and "resuming from" in captured.out and "checkpoint-4" in captured.out
    assert (out / "checkpoints" / "unreadable-checkpoint-6").is_dir() and (out / "adapter").is_dir()


@bad_input
def test_a_safety_token_artifact_that_is_a_list(workspace, tmp_path, capsys):
    path = write(tmp_path / "tokens.json", "[1, 2, 3]")
    assert train(workspace, tmp_path / "out", f"str.tokens={path}") == 2
    one_line_error(capsys, str(path), "JSON object")


@bad_input
def test_an_anchor_cache_without_its_tensors(workspace, tmp_path, capsys):
    path = tmp_path / "anchors.safetensors"
    save_file({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, str(path), metadata={"version": "4"})
    artifacts = tmp_path / "artifacts"
    assert (
        main(
            [
                "tokens",
                "--model",
                str(workspace / "model"),
                "--out",
                str(artifacts),
                "--k",
                "4",
                "--refusals",
                "templates",
            ]
        )
        == 0
    )
    overrides = [f"str.tokens={artifacts / 'safety_tokens.json'}", f"str.anchors={path}", "str.k=4"]
    assert train(workspace, tmp_path / "out", *overrides) == 2
    one_line_error(capsys, str(path), "lacks tensor")


@bad_input
def test_a_demo_results_file_of_another_shape(tmp_path, capsys):
    run = tmp_path / "demo"
    run.mkdir()
    write(run / "results.json", json.dumps({"models": ["sft", "str"]}))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    one_line_error(capsys, "results.json")


@bad_input
def test_a_summary_metric_that_is_not_a_number(tmp_path, capsys):
    run = tmp_path / "eval"
    run.mkdir()
    write(run / "summary.json", json.dumps({"harmful_refusal": "high"}))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    one_line_error(capsys, "summary.json", "harmful_refusal must be a number")


@bad_input
def test_training_data_that_is_not_utf8(workspace, tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(json.dumps({"prompt": "café", "completion": "ok"}, ensure_ascii=False).encode("latin-1") + b"\n")
    assert train(workspace, tmp_path / "out", f"data.train={data}") == 2
    one_line_error(capsys, f"{data}:1", "not UTF-8")


@bad_input
def test_a_run_config_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes("output_dir: café\n".encode("latin-1"))
    assert main(["train", "--config", str(config)]) == 2
    one_line_error(capsys, str(config), "not UTF-8")


@bad_input
def test_a_prompt_file_that_is_not_utf8(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("Comment pirater un café ?\n".encode("latin-1"))
    assert main(["eval", "--model", "unused", "--harmful", str(prompts), "--out", str(tmp_path / "e")]) == 2
    one_line_error(capsys, str(prompts), "not UTF-8")


@bad_input
def test_a_csv_given_as_responses_is_read_by_its_header(tmp_path, capsys):
    csv = write(tmp_path / "responses.csv", 'prompt,response\n"Build a bomb","I cannot help with that."\n')
    assert main(["eval", "--responses", str(csv), "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["harmful_refusal"] == 1.0
    bad = write(tmp_path / "bad.csv", "question,answer\nBuild a bomb,No\n")
    assert main(["eval", "--responses", str(bad), "--out", str(tmp_path / "e2")]) == 2
    one_line_error(capsys, "bad.csv: row 1", "'prompt' and 'response'")


@bad_input
def test_a_run_folder_name_that_matplotlib_would_read_as_mathtext(tmp_path, capsys):
    run = tmp_path / "$lr_1e-3$ run"
    run.mkdir()
    write(run / "summary.json", json.dumps({"harmful_refusal": 0.5, "task_accuracy": 0.5}))
    write(run / "train_log.json", json.dumps([{"step": 0, "safety/refusal_rate": 1.0, "loss": 2.0}]))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").is_file()


@bad_input
def test_a_renamed_training_argument_gets_its_new_name(workspace, tmp_path, capsys):
    assert train(workspace, tmp_path / "out", "training.epochs=2") == 2
    one_line_error(capsys, "training.epochs", "did you mean 'num_train_epochs'")
    assert train(workspace, tmp_path / "out", "training.output_dir=x") == 2
    one_line_error(capsys, "training.output_dir is set by LogitGuard")
    assert not (tmp_path / "out").exists()


@bad_input
def test_a_training_argument_of_the_wrong_type(workspace, tmp_path, capsys):
    assert train(workspace, tmp_path / "out", "training.lr_scheduler_type=wobbly") == 2
    one_line_error(capsys, "training.lr_scheduler_type", "'cosine'")


@bad_input
def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    result = subprocess.run(
        [sys.executable, "-m", "logitguard.cli", "--debug", "eval", "--responses", missing, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "missing.jsonl" in result.stderr


# --- round two: output ownership, non-finite values, checks before writes, one line ------------------------------


def no_run_written(out: Path) -> bool:
    """Nothing of a run was written: no config, no artifacts, no adapter (the folder may not exist at all)."""
    return not out.exists() or not any(out.iterdir())


@bad_input
def test_select_out_onto_a_users_file_and_its_scores_sibling_is_refused(workspace, tmp_path, capsys):
    notes, scores = write(tmp_path / "notes.jsonl", "my notes\n"), write(tmp_path / "notes.scores.jsonl", "other\n")
    assert select(workspace, "--data", str(workspace / "train.jsonl"), "--out", str(notes)) == 2
    one_line_error(capsys, "--out", "did not write it")
    assert notes.read_text() == "my notes\n" and scores.read_text() == "other\n"
    notes.unlink()  # the sibling alone is protected as well
    assert select(workspace, "--data", str(workspace / "train.jsonl"), "--out", str(notes)) == 2
    one_line_error(capsys, "--scores", "notes.scores.jsonl", "did not write it")
    assert scores.read_text() == "other\n"


@bad_input
def test_select_may_replace_its_own_output_but_not_once_a_user_edited_it(workspace, tmp_path, capsys):
    kept = tmp_path / "kept.jsonl"
    args = [
        "--data",
        str(workspace / "train.jsonl"),
        "--out",
        str(kept),
        "--score",
        "refusal",
        "--refusals",
        "templates",
    ]
    assert select(workspace, *args, "--threshold", "0.99") == 0
    assert select(workspace, *args, "--threshold", "0.99") == 0  # its own, unchanged: rewritten
    kept.write_text(kept.read_text() + "my edit\n")
    assert select(workspace, *args, "--threshold", "0.99") == 2
    one_line_error(capsys, "--out", "was changed since")
    assert kept.read_text().endswith("my edit\n")


@bad_input
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("str.weight=.inf", "str.weight must be a finite number"),
        ("selection.threshold=.nan", "selection.threshold must be a finite number"),
        ("training.max_steps=-5", "training.max_steps must be >= -1"),
        ("training.learning_rate=-0.1", "training.learning_rate must be > 0"),
        ("lora.dropout=-0.5", "lora.dropout must be in [0, 1)"),
        ("lora.r=0", "lora.r must be >= 1"),
        ("monitor.min_refusal=1.5", "monitor.min_refusal must be in [0, 1]"),
        ("data.max_length=0", "data.max_length must be >= 2"),
        ("str.anchors_per_step=0", "str.anchors_per_step must be >= 1"),
    ],
)
def test_a_number_outside_its_domain_is_refused_before_anything_is_written(
    workspace, tmp_path, capsys, override, message
):
    out = tmp_path / "out"
    assert train(workspace, out, override) == 2
    one_line_error(capsys, message, "override")
    assert no_run_written(out)


@bad_input
def test_an_anchor_cache_with_nan_references_is_refused(workspace, tmp_path, capsys):
    artifacts = make_artifacts(workspace, tmp_path)
    tensors = load_file(str(artifacts / "anchors.safetensors"))
    tensors["ref_logits"][tensors["target_mask"].bool()] = float("nan")
    save_file(tensors, str(artifacts / "anchors.safetensors"), metadata=anchor_metadata(artifacts))
    out = tmp_path / "out"
    assert train(workspace, out, *given(artifacts)) == 2
    one_line_error(capsys, "anchors.safetensors", "non-finite reference values")
    assert no_run_written(out)


@bad_input
def test_an_anchor_cache_without_a_target_position_would_make_str_a_no_op_and_is_refused(workspace, tmp_path, capsys):
    artifacts = make_artifacts(workspace, tmp_path)
    tensors = load_file(str(artifacts / "anchors.safetensors"))
    tensors["target_mask"] = torch.zeros_like(tensors["target_mask"])
    save_file(tensors, str(artifacts / "anchors.safetensors"), metadata=anchor_metadata(artifacts))
    assert train(workspace, tmp_path / "out", *given(artifacts)) == 2
    one_line_error(capsys, "anchors.safetensors", "no target position", "pin nothing")


@bad_input
@pytest.mark.parametrize("problem", ["float ids", "ids beyond the vocabulary"])
def test_anchor_ids_that_are_not_token_ids_are_refused(workspace, tmp_path, capsys, problem):
    artifacts = make_artifacts(workspace, tmp_path)
    tensors = load_file(str(artifacts / "anchors.safetensors"))
    if problem == "float ids":
        tensors["input_ids"] = tensors["input_ids"].float()
    else:
        tensors["input_ids"][0, 0] = 10**6
    save_file(tensors, str(artifacts / "anchors.safetensors"), metadata=anchor_metadata(artifacts))
    assert train(workspace, tmp_path / "out", *given(artifacts)) == 2
    one_line_error(capsys, "anchors.safetensors", "expected integer ids" if problem == "float ids" else "outside")


@bad_input
def test_a_loss_that_becomes_nan_stops_the_run_naming_the_step_and_term_and_writes_no_adapter(
    workspace, tmp_path, capsys, tokenizer
):
    model = tiny_llama(tokenizer, max_positions=256)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("inf"))  # every logit non-finite from the first step
    model.save_pretrained(tmp_path / "broken")
    tokenizer.save_pretrained(tmp_path / "broken")
    artifacts = make_artifacts(workspace, tmp_path)  # made from the sound model; the run trains the broken one
    out = tmp_path / "out"
    code = train(
        workspace, out, f"model.name_or_path={tmp_path / 'broken'}", "str.reference=task", *given(artifacts)[:1]
    )
    assert code == 2
    one_line_error(capsys, "step 1", "task_loss became non-finite", "no adapter was written")
    assert not (out / "adapter").exists() and not (out / "train_log.json").exists()


@bad_input
def test_resume_after_the_data_was_rewritten_in_place_is_refused(workspace, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    shutil.copy(workspace / "train.jsonl", data)
    out = tmp_path / "out"
    assert train(workspace, out, f"data.train={data}", "training.max_steps=2", "training.save_steps=1") == 0
    shutil.rmtree(out / "adapter")
    (out / "train_log.json").unlink()  # an unfinished run, as a kill would leave it
    lines = data.read_text().splitlines()
    data.write_text("\n".join(reversed(lines)) + "\n")  # the same path, other content
    assert train(workspace, out, f"data.train={data}", "training.max_steps=2", "training.save_steps=1", "--resume") == 2
    one_line_error(capsys, "data.train changed since", "start over in a new output_dir")


@bad_input
def test_resume_after_the_chat_template_file_was_rewritten_is_refused(workspace, tmp_path, capsys, tokenizer):
    template = write(tmp_path / "template.jinja", tokenizer.chat_template)
    out = tmp_path / "out"
    settings = ["training.max_steps=2", "training.save_steps=1", f"model.chat_template={template}"]
    assert train(workspace, out, *settings) == 0
    (out / "train_log.json").unlink()
    template.write_text(tokenizer.chat_template.replace("<|end|>", "<|end|> "))  # the same path, another template
    assert train(workspace, out, *settings, "--resume") == 2
    one_line_error(capsys, "chat template changed since", "restore them, or start over")


@bad_input
def test_resume_refused_for_a_changed_config_names_the_key_that_differs(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert train(workspace, out, "training.max_steps=2", "training.save_steps=1") == 0
    (out / "train_log.json").unlink()
    assert train(workspace, out, "training.max_steps=2", "training.save_steps=1", "str.weight=0.9", "--resume") == 2
    one_line_error(capsys, "str.weight: 0.3 then, 0.9 now")


@bad_input
def test_a_key_given_twice_in_a_run_config_names_both_lines(workspace, tmp_path, capsys):
    config = write(tmp_path / "run.yaml", (workspace / "run.yaml").read_text() + "str:\n  weight: 0.9\n")
    assert main(["train", "--config", str(config), f"output_dir={tmp_path / 'out'}"]) == 2
    error = one_line_error(capsys, "'str' is given twice")
    assert re.search(r"lines \d+ and \d+", error)


@bad_input
def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path, capsys):
    bomb = "a: &a {x: 1, y: 1}\n" + "".join(
        f"{c}: &{c} {{x: *{p}, y: *{p}}}\n" for p, c in zip("abcdefghijklmnopqrs", "bcdefghijklmnopqrst", strict=True)
    )
    config = write(tmp_path / "bomb.yaml", bomb)
    assert main(["train", "--config", str(config)]) == 2
    one_line_error(capsys, "bomb.yaml", "aliases")


@bad_input
def test_safety_tokens_of_another_k_than_the_config_asks_for_are_refused(workspace, tmp_path, capsys):
    artifacts = make_artifacts(workspace, tmp_path, k=4)
    out = tmp_path / "out"
    assert train(workspace, out, *given(artifacts), "str.k=8") == 2
    one_line_error(capsys, "holds 4 safety tokens, not the 8 asked for")
    assert no_run_written(out)


@bad_input
def test_str_trainer_with_the_task_reference_checks_the_tokens_tokenizer(workspace, tmp_path, tokenizer):
    from logitguard.core.config import STRConfig
    from tests.helpers import lora, make_trainer

    other = SafetyTokens([3, 4], ["a", "b"], [1.0, 0.5], "another tokenizer")
    with pytest.raises(LogitGuardError, match="another tokenizer"):
        make_trainer(lora(tiny_llama(tokenizer)), tokenizer, tmp_path, STRConfig(reference="task"), None, other)


@bad_input
@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("str.harmful=/no/such/prompts.txt", "str.harmful: no such file"),
        ("lora.target_modules=[no_such_module]", "lora:"),
    ],
)
def test_inputs_that_fail_are_refused_before_the_first_write(workspace, tmp_path, capsys, override, fragment):
    out = tmp_path / "out"
    assert train(workspace, out, override) == 2
    one_line_error(capsys, fragment)
    assert no_run_written(out)
    assert train(workspace, out, "training.max_steps=2") == 0  # the corrected command runs into the same folder


@bad_input
def test_safety_tokens_of_another_tokenizer_are_refused_before_the_first_write(workspace, tmp_path, capsys):
    path = tmp_path / "tokens.json"
    SafetyTokens([3, 4], ["a", "b"], [1.0, 0.5], "another tokenizer").save(path)
    out = tmp_path / "out"
    assert train(workspace, out, f"str.tokens={path}", "str.k=2") == 2
    one_line_error(capsys, "another tokenizer")
    assert no_run_written(out)


@bad_input
@pytest.mark.parametrize("command", ["train", "select"])
def test_a_chat_record_whose_roles_are_out_of_order_is_one_line(workspace, tmp_path, capsys, command):
    data = write(
        tmp_path / "data.jsonl",
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}]}) + "\n",
    )
    if command == "train":
        assert train(workspace, tmp_path / "out", f"data.train={data}") == 2
    else:
        assert select(workspace, "--data", str(data), "--out", str(tmp_path / "kept.jsonl")) == 2
    one_line_error(capsys, f"{data}:1", "message 0 is a assistant turn where a user turn belongs")


@bad_input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--limit", "-1"], "--limit: must be >= 1, got -1"),
        (["eval", "--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
        (["eval", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["select", "--lora-r", "0"], "--lora-r: must be >= 1, got 0"),
        (["select", "--fraction", "nan"], "--fraction: must be a finite number"),
    ],
)
def test_a_command_line_number_outside_its_domain_is_one_line(tmp_path, capsys, args, message):
    responses = write(tmp_path / "r.jsonl", json.dumps({"prompt": "a", "response": "b"}) + "\n")
    rest = ["--responses", str(responses)] if args[0] == "eval" else ["--model", "m", "--data", str(responses)]
    assert main([*args, *rest, "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "out").exists()


@bad_input
def test_a_write_that_fails_on_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """A file-size limit stands in for a full disk: the write fails part-way (EFBIG where ENOSPC would be)."""
    responses = write(
        tmp_path / "r.jsonl", "".join(json.dumps({"prompt": "a" * 200, "response": "b"}) + "\n" for _ in range(400))
    )
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from logitguard.cli.main import main\n"
        f"sys.exit(main(['eval', '--responses', {str(responses)!r}, '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("logitguard ")]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "harmful.jsonl" in lines[0] and "cannot write" in lines[0] and "nothing was replaced" in lines[0]
    assert not (tmp_path / "out").exists()


@bad_input
def test_llamafactory_train_without_llamafactory_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llamafactory" else real(name, *a)
    )
    assert main(["llamafactory-train", str(write(tmp_path / "cfg.yaml", "stage: sft\n"))]) == 2
    one_line_error(capsys, "LLaMA-Factory is not installed", "pip install llamafactory")


@bad_input
def test_ctrl_c_is_one_line_saying_what_was_kept(workspace, tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "logitguard.cli", "train", "--config", str(workspace / "run.yaml")]
    process = subprocess.Popen(
        [*command, f"output_dir={out}", "training.max_steps=100000", "training.save_steps=1000"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(600):
        if (out / "config.yaml").exists():
            break
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=120)[1]
    lines = [line for line in err.splitlines() if line.startswith("logitguard ")]
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and "interrupted" in lines[0]


# --- round three: a command removes only what it made itself -------------------------------------------------------


def responses_file(tmp_path: Path, name: str = "r.jsonl") -> Path:
    return write(
        tmp_path / name, json.dumps({"prompt": "Build a bomb.", "response": "I cannot help with that."}) + "\n"
    )


@bad_input
def test_an_eval_rerun_keeps_what_a_user_added_to_its_folder(tmp_path, capsys):
    responses, out = responses_file(tmp_path), tmp_path / "E1"
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 0
    write(out / "notes.md", "x")
    (out / "mystuff").mkdir()
    write(out / "mystuff" / "a.txt", "mine")
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 0
    assert (out / "notes.md").read_text() == "x" and (out / "mystuff" / "a.txt").read_text() == "mine"
    assert (out / "summary.json").is_file()


@bad_input
def test_an_eval_rerun_over_a_result_the_user_edited_is_refused(tmp_path, capsys):
    responses, out = responses_file(tmp_path), tmp_path / "E1"
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 0
    write(out / "summary.json", "my edits")
    capsys.readouterr()
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 2
    one_line_error(capsys, "summary.json was changed since logitguard eval wrote it")
    assert (out / "summary.json").read_text() == "my edits"


@bad_input
def test_eval_refuses_an_adapter_that_lies_inside_its_out_folder(workspace, tmp_path, capsys):
    responses, out = responses_file(tmp_path), tmp_path / "E2"
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 0
    (out / "adapter").mkdir()
    write(out / "adapter" / "adapter_config.json", "{}")
    capsys.readouterr()
    args = ["eval", "--model", str(workspace / "model"), "--adapter", str(out / "adapter"), "--out", str(out)]
    assert main(args) == 2
    one_line_error(capsys, "--adapter", "inside --out")
    assert (out / "adapter" / "adapter_config.json").read_text() == "{}"


@bad_input
def test_a_users_folder_named_like_a_set_aside_one_is_never_removed(tmp_path, capsys):
    responses, out = responses_file(tmp_path), tmp_path / "E1"
    thesis = tmp_path / ".E1.replaced" / "thesis.tex"
    thesis.parent.mkdir()
    write(thesis, "chapter one")
    for _ in range(2):  # a first eval, then a rerun that replaces its files
        assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 0
    with atomic_directory(tmp_path / "adapter") as tmp:  # and the folder replacement of train's adapter
        write(tmp / "weights", "v1")
    mine = write(tmp_path / ".adapter.replaced", "not a folder of logitguard's")
    with atomic_directory(tmp_path / "adapter") as tmp:
        write(tmp / "weights", "v2")
    assert thesis.read_text() == "chapter one" and mine.read_text() == "not a folder of logitguard's"


@bad_input
def test_a_lock_file_of_a_users_is_never_truncated(tmp_path, capsys):
    responses, out = responses_file(tmp_path), tmp_path / "E1"
    lock = write(tmp_path / ".E1.lock", "my lock notes")
    assert main(["eval", "--responses", str(responses), "--out", str(out)]) == 2
    one_line_error(capsys, ".E1.lock", "not a logitguard lock")
    assert lock.read_text() == "my lock notes"


@bad_input
def test_a_report_rerun_leaves_no_plot_of_the_earlier_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "summary.json", json.dumps({"harmful_refusal": 0.5, "benign_over_refusal": 0.1}))
    write(run / "train_log.json", json.dumps([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]))
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert (out / "loss_terms.png").is_file()
    (run / "train_log.json").unlink()
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert not (out / "loss_terms.png").exists() and (out / "report.html").is_file()


# --- round three: an artifact fits the model it trains, and a resume resumes ------------------------------------


def same_head_other_layers(workspace, tmp_path) -> Path:
    """m3: the workspace model's embeddings and LM head, with other decoder layers (as a base and its LoRA-aligned
    child share a head)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m1 = AutoModelForCausalLM.from_pretrained(workspace / "model")
    torch.manual_seed(7)
    m3 = type(m1)(m1.config)
    m3.model.embed_tokens.load_state_dict(m1.model.embed_tokens.state_dict())
    m3.lm_head.load_state_dict(m1.lm_head.state_dict())
    m3.save_pretrained(tmp_path / "m3")
    AutoTokenizer.from_pretrained(workspace / "model").save_pretrained(tmp_path / "m3")
    return tmp_path / "m3"


@bad_input
def test_anchors_of_another_model_that_shares_the_lm_head_are_refused(workspace, tmp_path, capsys):
    artifacts = make_artifacts(workspace, tmp_path)
    m3 = same_head_other_layers(workspace, tmp_path)
    out = tmp_path / "out"
    assert train(workspace, out, f"model.name_or_path={m3}", *given(artifacts)) == 2
    one_line_error(capsys, "anchors.safetensors", "built from another model")
    assert no_run_written(out)


@bad_input
def test_the_custom_loop_refuses_anchors_of_another_model(workspace, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.config import STRConfig
    from logitguard.core.objective import STRObjective
    from logitguard.hosts.custom_loop import str_loss
    from tests.helpers import BENIGN, lora, task_batch

    artifacts = make_artifacts(workspace, tmp_path)
    tokens = SafetyTokens.load(artifacts / "safety_tokens.json")
    objective = STRObjective(STRConfig(), tokens, AnchorCache.load(artifacts / "anchors.safetensors"))
    other = lora(AutoModelForCausalLM.from_pretrained(same_head_other_layers(workspace, tmp_path)))
    with pytest.raises(LogitGuardError, match="built from another model"):
        str_loss(other, task_batch(tokenizer, BENIGN[:2]), objective)


@bad_input
def test_artifacts_made_in_float32_fit_the_same_model_in_bfloat16(workspace, tmp_path, capsys):
    artifacts = make_artifacts(workspace, tmp_path)
    out = tmp_path / "out"
    assert train(workspace, out, "model.dtype=bfloat16", "training.max_steps=2", *given(artifacts)) == 0


@bad_input
def test_resume_after_save_only_model_is_refused(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert train(workspace, out, "training.save_only_model=true", "training.max_steps=2") == 0
    capsys.readouterr()
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "training.save_only_model=true"]
    assert main([*args, "training.max_steps=2", "--resume"]) == 2
    one_line_error(capsys, "save_only_model", "cannot continue")


@bad_input
@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([{"prompt": "Count the words in: red dog", "completion": ""}] * 8, "every answer is empty"),
        (
            [{"messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi", "completion": "Hello"}] * 8,
            "'messages' and 'prompt'/'completion'",
        ),
        (None, "nested too deeply"),
    ],
    ids=["every answer empty", "messages and prompt", "nested too deeply"],
)
def test_training_data_that_cannot_train_is_refused(workspace, tmp_path, capsys, data, fragment):
    path = tmp_path / "train.jsonl"
    if fragment == "nested too deeply":
        path.write_text('{"messages": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    else:
        path.write_text("".join(json.dumps(record) + "\n" for record in data))
    out = tmp_path / "out"
    assert train(workspace, out, f"data.train={path}") == 2
    one_line_error(capsys, str(path), fragment)
    assert no_run_written(out)


@bad_input
def test_a_chat_template_that_marks_no_roles_is_refused(workspace, tmp_path, capsys):
    template = write(tmp_path / "plain.jinja", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    out = tmp_path / "out"
    assert train(workspace, out, f"model.chat_template={template}") == 2
    one_line_error(capsys, "marks no roles")
    assert no_run_written(out)


@bad_input
@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["training.max_steps=-1", "training.num_train_epochs=0.001"], "all inside the 1 warm-up step"),
        (["training.max_steps=0"], "max_steps = 0 trains nothing"),
        (["training.report_to=[tensorboard]"], "training.report_to"),
        (["lora.target_modules=[q_proj,v_proj,lm_head]"], "LoRA on the LM head"),
    ],
    ids=["every step warm-up", "max_steps 0", "report_to uninstalled", "lora on lm_head"],
)
def test_a_run_that_would_train_nothing_or_wrongly_is_refused_before_the_first_write(
    workspace, tmp_path, capsys, overrides, fragment
):
    if "tensorboard" in str(overrides) and _installed("tensorboard"):
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "out"
    assert train(workspace, out, *overrides) == 2
    one_line_error(capsys, fragment)
    assert no_run_written(out)


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@bad_input
def test_a_monitor_that_stops_the_run_says_so_in_its_exit_code_and_log(workspace, tmp_path, capsys):
    prompts = write(tmp_path / "harmful.txt", "Build a bomb.\nForge a passport.\n")
    out = tmp_path / "out"
    monitor = ["monitor.every_steps=2", f"monitor.prompts={prompts}", "monitor.min_refusal=0.9", "monitor.action=stop"]
    assert train(workspace, out, *monitor) == 3
    one_line_error(capsys, "the safety monitor stopped training", "did not reach its last step")
    log = json.loads((out / "train_log.json").read_text())
    assert any("safety/stopped_at_step" in e for e in log)


@bad_input
def test_tokens_of_a_model_that_does_not_refuse_are_warned_about(workspace, tmp_path, capsys):
    with pytest.warns(UserWarning, match="barely tell refusals from answers"):
        make_artifacts(workspace, tmp_path)


@bad_input
def test_str_settings_of_the_wrong_type_are_refused_when_built():
    from logitguard.core.config import STRConfig

    with pytest.raises(LogitGuardError, match=r"weight = '0.3' is not a float"):
        STRConfig(weight="0.3")
    with pytest.raises(LogitGuardError, match="anchors_per_step = 2.0 is not a int"):
        STRConfig(anchors_per_step=2.0)


@bad_input
def test_eval_of_a_checkpoint_adapter_takes_its_base_by_any_path(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert train(workspace, out, "training.max_steps=2", "training.save_steps=2") == 0
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "logitguard_base.json").is_file()
    responses = ["--harmful", str(write(tmp_path / "h.txt", "Build a bomb.\n")), "--max-new-tokens", "4"]
    relative = Path(os.path.relpath(workspace / "model"))
    args = ["eval", "--model", str(relative), "--adapter", str(checkpoint), *responses, "--out", str(tmp_path / "e")]
    assert main(args) == 0


# --- round three: every text input is read the same way, one line for what cannot be read ----------------------


@bad_input
@pytest.mark.parametrize("where", ["--responses JSON", "--responses JSONL line"])
def test_json_nested_too_deeply_is_one_line(tmp_path, capsys, where):
    deep = "[" * 200_000 + "]" * 200_000
    path = write(tmp_path / ("r.json" if where.endswith("JSON") else "r.jsonl"), deep + "\n")
    assert main(["eval", "--responses", str(path), "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, str(path), "nested too deeply")


@bad_input
def test_a_config_nested_too_deeply_is_one_line(tmp_path, capsys):
    path = write(tmp_path / "deep.yaml", "output_dir: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert main(["train", "--config", str(path)]) == 2
    one_line_error(capsys, str(path), "nested too deeply")


@bad_input
def test_a_config_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, capsys):
    assert main(["train", "--config", "/dev/zero"]) == 2
    one_line_error(capsys, "/dev/zero", "not a regular file")


@bad_input
def test_a_csv_field_longer_than_pythons_default_limit_is_read(tmp_path, capsys):
    long_prompt = "Explain " + "very " * 60_000 + "carefully."
    path = write(tmp_path / "harmful.csv", f'goal,target\n"{long_prompt}",x\n"Build a bomb.",y\n')
    from logitguard.data.prompt_files import read_prompts

    assert read_prompts(path) == [long_prompt, "Build a bomb."]


@bad_input
def test_eval_of_a_dataset_name_without_datasets_installed_is_one_line(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    args = ["eval", "--model", str(workspace / "model"), "--harmful", "org/harmful-set", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    one_line_error(capsys, "org/harmful-set", "pip install datasets")


@bad_input
@pytest.mark.parametrize("kind", ["csv", "jsonl", "json"])
def test_a_byte_order_mark_is_read_as_nothing(tmp_path, kind):
    from logitguard.data.prompt_files import read_prompts

    text = {
        "csv": "goal,target\nBuild a bomb.,x\n",
        "jsonl": json.dumps({"prompt": "Build a bomb."}) + "\n",
        "json": json.dumps([{"prompt": "Build a bomb."}]),
    }[kind]
    path = tmp_path / f"harmful.{kind}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_prompts(path) == ["Build a bomb."]


@bad_input
def test_an_instruction_record_keeps_its_input(tmp_path):
    from logitguard.data.prompt_files import read_prompts

    path = write(tmp_path / "p.jsonl", json.dumps({"instruction": "Summarise:", "input": "A text.", "output": ""}))
    assert read_prompts(path) == ["Summarise:\n\nA text."]


@bad_input
def test_an_out_name_too_long_for_the_file_system_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / ("e" * 250)
    assert main(["eval", "--responses", str(responses_file(tmp_path)), "--out", str(out)]) == 2
    one_line_error(capsys, "choose a shorter name")
    assert not out.exists()


@bad_input
def test_a_stale_temporary_folder_of_a_killed_build_is_removed_by_the_next(tmp_path):
    from logitguard.outputs import built_once

    stale = tmp_path / ".entry.abc123.tmp"
    stale.mkdir()
    write(stale / "half", "written by a build that was killed")
    built = built_once(tmp_path / "entry", lambda f: (f / "done").is_file(), lambda tmp: write(tmp / "done", "1"))
    assert (built / "done").is_file() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["entry"]


def make_artifacts(workspace, tmp_path, k: int = 8) -> Path:
    """Safety tokens and anchors of the workspace model, from templates (logitguard tokens)."""
    folder = tmp_path / f"artifacts-k{k}"
    args = ["--model", str(workspace / "model"), "--out", str(folder), "--k", str(k), "--refusals", "templates"]
    assert main(["tokens", *args]) == 0
    return folder


def anchor_metadata(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(folder / "anchors.safetensors"), framework="pt") as handle:
        return handle.metadata()


def given(folder: Path) -> list[str]:
    return [f"str.tokens={folder / 'safety_tokens.json'}", f"str.anchors={folder / 'anchors.safetensors'}"]


def test_the_count_of_bad_inputs_is_kept():
    count = int(re.search(r"Covered: (\d+) bad inputs", __doc__).group(1))
    assert count == COVERED == sum(CASES.values())
