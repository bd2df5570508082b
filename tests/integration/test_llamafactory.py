"""``logitguard llamafactory-train`` against LLaMA-Factory's own ``llamafactory-cli train``, on a tiny local Llama.

Run: LOGITGUARD_LLAMAFACTORY_PYTHON=$(bash tests/integration/make_venv.sh llamafactory) python -m pytest -m integration
(skipped when the variable is unset; .ci/run sets it).
"""

import json
import os
from pathlib import Path

import pytest

from tests.helpers import framework_config, framework_workspace, run_python, train_in

pytestmark = pytest.mark.integration
PYTHON = os.environ.get("LOGITGUARD_LLAMAFACTORY_PYTHON")
if not PYTHON:
    pytest.skip(
        "set LOGITGUARD_LLAMAFACTORY_PYTHON=$(bash tests/integration/make_venv.sh llamafactory)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    root = framework_workspace(tmp_path_factory.mktemp("llamafactory"), tokenizer)
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    info = {"toy": {"file_name": "train.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"}}}
    info["toy"]["tags"] = tags
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def config(workspace: Path, name: str, **logitguard) -> Path:
    """A LLaMA-Factory SFT config for 4 LoRA steps on CPU, seeded; ``logitguard`` is its block (none if empty)."""
    cfg = {
        "model_name_or_path": str(workspace / "model"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "dataset": "toy",
        "dataset_dir": str(workspace),
        "template": "default",
        "cutoff_len": 64,
        "overwrite_cache": True,
        "output_dir": str(workspace / name),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 0.01,
        "max_steps": 4,
        "lr_scheduler_type": "constant",
        "seed": 0,
        "bf16": False,
    }
    return framework_config(workspace / f"{name}.yaml", cfg, logitguard)


def logitguard_train(cfg: Path) -> list[dict]:
    return train_in(PYTHON, "-m", "logitguard.cli", "llamafactory-train", str(cfg))


def test_str_terms_are_logged_and_the_run_is_marked(workspace):
    logs = logitguard_train(config(workspace, "str", weight=0.3))
    assert all(float(log["str_anchor"]) > 0 for log in logs[1:]) and all("task_loss" in log for log in logs)
    marker = json.loads((workspace / "str" / "logitguard_str.json").read_text())
    assert marker["active"] and marker["trainer"] == "STRCustomSeq2SeqTrainer"


def test_weight_zero_gives_the_losses_of_llamafactory_alone(workspace):
    # `llamafactory-cli train`, LLaMA-Factory's own entry point
    plain = train_in(PYTHON, "-m", "llamafactory.cli", "train", str(config(workspace, "plain")))
    zero = logitguard_train(config(workspace, "zero", weight=0.0))
    assert [float(log["loss"]) for log in zero] == pytest.approx([float(log["loss"]) for log in plain], rel=1e-4)


def test_a_missing_artifact_and_an_unknown_key_stop_the_run(workspace):
    missing = config(workspace, "missing", anchors=str(workspace / "no_such_anchors.safetensors"))
    done = run_python(PYTHON, "-m", "logitguard.cli", "llamafactory-train", str(missing))
    assert done.returncode == 2 and "no_such_anchors.safetensors" in done.stderr
    typo = config(workspace, "typo", wieght=0.3)
    done = run_python(PYTHON, "-m", "logitguard.cli", "llamafactory-train", str(typo))
    assert done.returncode == 2 and "unknown key 'logitguard.wieght'" in done.stderr
