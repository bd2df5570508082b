"""LogitGuard's Axolotl plugin through Axolotl's own entry point, on a tiny local Llama, on CPU.

Run: LOGITGUARD_AXOLOTL_PYTHON=$(bash tests/integration/make_venv.sh axolotl) python -m pytest -m integration
(skipped when the variable is unset; .ci/run sets it).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from logitguard.artifacts import safety_artifacts
from tests.helpers import framework_config, framework_workspace, run_python, train_in

pytestmark = pytest.mark.integration
PYTHON = os.environ.get("LOGITGUARD_AXOLOTL_PYTHON")
PLUGIN = "logitguard.integrations.axolotl.LogitGuardPlugin"
if not PYTHON:
    pytest.skip("set LOGITGUARD_AXOLOTL_PYTHON=$(bash tests/integration/make_venv.sh axolotl)", allow_module_level=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    return framework_workspace(tmp_path_factory.mktemp("axolotl"), tokenizer)


@pytest.fixture(scope="module")
def shifted(workspace, tokenizer):
    """Artifacts made from the workspace model, and a copy of it with its MLPs moved and its output embedding
    unchanged: another model, which the artifacts' fingerprint (every weight) must tell from theirs."""
    model = AutoModelForCausalLM.from_pretrained(workspace / "model")
    safety_artifacts(
        model,
        tokenizer,
        workspace / "given" / "tokens.json",
        workspace / "given" / "anchors.safetensors",
        refusals="templates",
        k=8,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp." in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(workspace / "shifted")
    tokenizer.save_pretrained(workspace / "shifted")
    return workspace


def config(workspace: Path, name: str, plugins: list[str], model: str = "model", **logitguard) -> Path:
    """An Axolotl config for 4 LoRA steps on CPU, seeded; ``logitguard`` is its block (none if empty)."""
    cfg = {
        "base_model": str(workspace / model),
        "datasets": [{"path": str(workspace / "train.jsonl"), "type": "chat_template", "field_messages": "messages"}],
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(workspace / "prepared"),
        "val_set_size": 0,
        "output_dir": str(workspace / name),
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "sequence_len": 64,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 4,
        "learning_rate": 0.01,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "flash_attention": False,
        "sample_packing": False,
        # Axolotl turns on its Triton LoRA kernels by itself, and one of them needs CUDA
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "lora_embedding_kernel": False,
        "plugins": plugins,
    }
    return framework_config(workspace / f"{name}.yml", cfg, logitguard)


def run(*args: str) -> subprocess.CompletedProcess:
    return run_python(PYTHON, *args)


def train(cfg: Path) -> list[dict]:
    """``axolotl train cfg`` (its real entry point); the Trainer's per-step log dicts."""
    return train_in(PYTHON, "-m", "axolotl.cli.train", str(cfg))


def test_artifacts_are_made_on_first_use_the_terms_logged_and_the_run_marked(workspace):
    logs = train(config(workspace, "str", [PLUGIN], weight=0.3))
    assert all("str_anchor" in log and "task_loss" in log for log in logs)
    marker = json.loads((workspace / "str" / "logitguard_str.json").read_text())
    assert marker["active"] and marker["str"]["weight"] == 0.3 and marker["anchors"] > 0
    assert (workspace / "str" / "safety_tokens.json").is_file() and (
        workspace / "str" / "anchors.safetensors"
    ).is_file()


def test_given_artifacts_are_read_and_the_penalty_acts_once_the_adapters_move(shifted):
    given = {
        "tokens": str(shifted / "given" / "tokens.json"),
        "anchors": str(shifted / "given" / "anchors.safetensors"),
    }
    logs = train(config(shifted, "given-run", [PLUGIN], weight=0.3, **given))
    anchor_terms = [float(log["str_anchor"]) for log in logs]  # 0 at the aligned model, then growing as it moves
    assert anchor_terms[0] == 0.0 and anchor_terms[-1] > 0 and anchor_terms == sorted(anchor_terms)
    marker = json.loads((shifted / "given-run" / "logitguard_str.json").read_text())
    assert marker["safety_tokens"] == json.loads((shifted / "given" / "tokens.json").read_text())["tokens"]
    assert not (shifted / "given-run" / "anchors.safetensors").exists()  # read, not made again
    other = run("-m", "axolotl.cli.train", str(config(shifted, "other", [PLUGIN], model="shifted", **given)))
    assert other.returncode != 0 and "built from another model" in other.stderr  # the head alone does not pass


def test_weight_zero_gives_the_losses_of_axolotls_own_trainer(workspace):
    # Axolotl seeds only in Trainer.__init__, after the LoRA adapters are initialised, so two runs of Axolotl alone
    # differ from their second step on. The plugin seeds before the model loads; with `enabled: false` it does only
    # that and leaves Axolotl's own trainer in place, which makes the seeded baseline.
    own = train(config(workspace, "own", [PLUGIN], enabled=False))
    zero = train(config(workspace, "zero", [PLUGIN], weight=0.0))
    assert all("str_anchor" not in log for log in own) and all("str_anchor" in log for log in zero)
    assert [float(log["loss"]) for log in zero] == pytest.approx([float(log["loss"]) for log in own], rel=1e-4)


def test_check_passes_a_good_config_and_fails_a_misspelled_plugin(workspace):
    good = run("-m", "logitguard.cli", "check", "axolotl", str(config(workspace, "good", [PLUGIN], weight=0.3)))
    assert good.returncode == 0 and "STR will run" in good.stdout
    typo = config(workspace, "typo", ["logitguard.integrations.axolotl.LogitGaurdPlugin"], weight=0.3)
    bad = run("-m", "logitguard.cli", "check", "axolotl", str(typo))
    assert bad.returncode == 2 and "WITHOUT STR" in bad.stderr and "Traceback" not in bad.stderr
    misspelled_key = run("-m", "logitguard.cli", "check", "axolotl", str(config(workspace, "key", [PLUGIN], wieght=1)))
    assert misspelled_key.returncode == 2 and "logitguard.wieght" in misspelled_key.stderr
    off = run("-m", "logitguard.cli", "check", "axolotl", str(config(workspace, "off", [PLUGIN], enabled=False)))
    assert off.returncode == 2 and "STR will NOT run" in off.stderr


def test_a_missing_artifact_stops_the_run(workspace):
    cfg = config(workspace, "missing", [PLUGIN], weight=0.3, tokens=str(workspace / "no_such_tokens.json"))
    done = run("-m", "axolotl.cli.train", str(cfg))
    assert done.returncode != 0 and "no_such_tokens.json" in done.stderr


def test_the_example_config_passes_the_check():
    example = Path(__file__).parents[2] / "configs" / "frameworks" / "axolotl_qwen2.5_1.5b_lora_str.yaml"
    done = run("-m", "logitguard.cli", "check", "axolotl", str(example))
    assert done.returncode == 0, done.stderr
