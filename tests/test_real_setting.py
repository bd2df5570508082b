"""The public-data readers and the GSM8K setting of the real-model benchmark, on a small fake data folder."""

import json
from functools import partial
from pathlib import Path

import pytest

from logitguard.lab.public_data import (
    evaluation_prompts,
    gsm8k,
    gsm8k_number,
    safety_tuning_pairs,
)
from tests.helpers import tiny_llama


@pytest.fixture
def data_root(tmp_path):
    """A data folder laid out as the public sets are, with a few records of each."""
    root = tmp_path / "data"
    (root / "safety-tuned-llamas" / "evaluation").mkdir(parents=True)
    records = [
        {
            "instruction": "Explain how to pick a lock.",
            "input": "",
            "output": "I'm sorry, but I cannot help with that.",
        },
        {"instruction": "Summarise this.", "input": "A text.", "output": "There are several points: one, two."},
    ]
    (root / "safety-tuned-llamas" / "safety_only_data_Instructions.json").write_text(json.dumps(records))
    for name in ("I-MaliciousInstructions", "I-CoNa", "I-PhysicalSafetySafe", "I-Alpaca"):
        prompts = [f"{name} prompt {i}" for i in range(4)]
        (root / "safety-tuned-llamas" / "evaluation" / f"{name}.json").write_text(json.dumps({"instructions": prompts}))
    (root / "gsm8k").mkdir()
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"} for i in range(6)]
    for split in ("train", "test"):
        (root / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "self-instruct").mkdir()
    task = {
        "instruction": "Say hi.",
        "instances": [{"input": "", "output": "Hi!"}, {"input": "Bob", "output": "Hi Bob"}],
    }
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        (root / "self-instruct" / name).write_text(json.dumps(task) + "\n")
    return root


def test_readers_take_the_files_as_their_authors_wrote_them(data_root):
    assert safety_tuning_pairs(data_root)[1] == ("Summarise this.\n\nA text.", "There are several points: one, two.")
    assert evaluation_prompts(data_root, "I-CoNa")[0] == "I-CoNa prompt 0"
    assert gsm8k(data_root, "test")[5] == ("What is 5 + 5?", "5 + 5 = 10\n#### 10")


@pytest.mark.parametrize(
    ("text", "number"), [("so 3 + 4 = 7\n#### 7", "7"), ("#### 1,234", "1234"), ("#### $-2.5", "-2.5"), ("7", None)]
)
def test_gsm8k_numbers(text, number):
    assert gsm8k_number(text) == number


def test_a_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="gsm8k/train.jsonl: no such file"):
        gsm8k(tmp_path, "train")


def test_the_setting_evaluates_and_draws_short_training_problems(data_root, tmp_path, tokenizer, capsys):
    from logitguard.lab.gsm8k import GSM8KSetting

    model_dir = tmp_path / "model"
    tiny_llama(tokenizer, max_positions=512).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    setting = GSM8KSetting(
        data_root, model=str(model_dir), n_eval=4, n_task=2, n_nll=3, harmful_tokens=4, task_tokens=4
    )
    setting.n_monitor = 2
    metrics = setting.evaluate(setting.load_aligned())
    assert set(metrics) == {
        "harmful_refusal",
        "harmful_refusal_opening",
        "benign_over_refusal",
        "task_accuracy",
        "task_format",
        "task_nll",
        *(f"harmful_refusal/{name}" for name in ("I-MaliciousInstructions", "I-CoNa")),
        *(f"benign_over_refusal/{name}" for name in ("I-PhysicalSafetySafe", "I-Alpaca")),
    }
    assert metrics["task_nll"] > 0 and 0 <= metrics["harmful_refusal"] <= 1
    assert "evaluating" not in capsys.readouterr().err  # quiet in benchmarks
    setting.progress = True  # the demo shows a bar for each set (an evaluation takes minutes on a CPU)
    assert setting.evaluate(setting.load_aligned()) == metrics
    shown = capsys.readouterr().err
    assert all(f"evaluating: {name}" in shown for name in ("I-MaliciousInstructions", "I-Alpaca", "GSM8K test"))
    malicious, hateful = "I-MaliciousInstructions prompt", "I-CoNa prompt"
    assert setting.prompts("harmful") == [f"{malicious} 0", f"{malicious} 1", f"{hateful} 0", f"{hateful} 1"]
    assert len(setting.benign_data(3, seed=0)) == 3 and setting.benign_data(3, 0) == setting.benign_data(3, 0)


@pytest.mark.slow
def test_the_real_demo_compares_sft_and_str_at_the_benchmark_budget(data_root, tmp_path, tokenizer, monkeypatch):
    import logitguard.artifacts
    from logitguard.lab.demo_command import main
    from logitguard.lab.gsm8k import STEPS

    model_dir = tmp_path / "model"
    tiny_llama(tokenizer, max_positions=512).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # a random model refuses nothing: its anchors teacher-force the built-in refusal templates instead
    templated = partial(logitguard.artifacts.prepare_artifacts, refusals="templates")
    monkeypatch.setattr(logitguard.artifacts, "prepare_artifacts", templated)
    out = tmp_path / "demo"
    assert main(["--model", str(model_dir), "--data", str(data_root), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"aligned", "sft", "str"}
    assert results["config"]["finetune"]["steps"] == STEPS
    assert (out / "report.md").is_file() and (out / "refusal_curve.png").is_file()


SHARED = Path(__file__).parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "harmful-prompts").is_dir(), reason="needs the public data folder (../shared/data)")
def test_what_evaluates_is_never_what_trains_or_anchors():
    from benchmarks.public_sets import harmful_training_prompts
    from logitguard.lab.gsm8k import public_held_out_sets
    from logitguard.lab.public_data import held_out, lookalike_training_prompts

    sets = public_held_out_sets(SHARED)
    evaluated = {p for s in sets for p in s.prompts}
    assert {s.kind for s in sets} == {"harmful", "lookalike", "benign"} and all(s.prompts for s in sets)
    assert all(held_out(p) for s in sets if s.kind != "benign" for p in s.prompts)
    anchored = set(harmful_training_prompts(SHARED)) | set(lookalike_training_prompts(SHARED))
    assert len(anchored) > 300 and not anchored & evaluated
    assert not any(held_out(p) for p in anchored)


def test_a_real_demo_builds_its_setting_and_leaves_unset_sizes_to_it(data_root, tmp_path, tokenizer):
    from logitguard.lab.demo import RealDemo
    from logitguard.lab.gsm8k import GSM8KSetting

    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(model_dir)
    qwen_like = RealDemo("public-held-out", 40, two_sided=True, n_task=20).setting(data_root, str(model_dir))
    assert (qwen_like.evaluation, qwen_like.n_task, qwen_like.progress) == ("public-held-out", 20, False)
    default = RealDemo().setting(data_root, str(model_dir), progress=True)
    assert default.n_task == GSM8KSetting.n_task and default.evaluation == "safety-tuned-llamas" and default.progress
