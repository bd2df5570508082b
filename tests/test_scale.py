"""STR when one device is not enough: sharded with FSDP2 over processes, with gradient checkpointing, and QLoRA's
one-line refusal where it cannot run. The sharded runs assert that sharding happened (``lm_head`` a ``DTensor``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from logitguard.artifacts.references import build_anchor_cache
from logitguard.core.config import STRConfig
from logitguard.core.objective import STRObjective
from logitguard.hosts.custom_loop import str_loss
from tests.helpers import BENIGN, REFUSALS, lora, perturb_lora, safety_tokens, task_batch, tiny_llama

ROOT = Path(__file__).parents[1]


def host(out: Path, *flags: str, processes: int = 1) -> dict:
    """Run ``tests/fsdp_host.py`` (one process, or ``processes`` under torchrun) and read what it wrote."""
    script = ["-m", "tests.fsdp_host", str(out), *flags]
    command = [sys.executable, *script] if processes == 1 else ["torchrun", f"--nproc_per_node={processes}", *script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads((out / "terms.json").read_text()), "weights": load_file(str(out / "weights.safetensors"))}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("wrap", ["layers and root", "layers, tail unit and root"])
def test_fsdp2_over_two_processes_matches_one_process(tmp_path, mode, wrap):
    flags = ["--full"] if mode == "full" else []
    single = host(tmp_path / "single", *flags)
    tail = ["--tail-unit"] if "tail" in wrap else []
    sharded = host(tmp_path / "sharded", "--fsdp", *flags, *tail, processes=2)
    assert sharded["lm_head_sharded"] and not single["lm_head_sharded"]  # sharding happened (no silent fallback)
    assert sharded["weights"].keys() == single["weights"].keys()
    assert ("lm_head.weight" in sharded["weights"]) == (mode == "full")  # trained when full, frozen under LoRA
    for key, value in single["weights"].items():
        assert torch.allclose(sharded["weights"][key], value, atol=1e-5), key
    for ours, theirs in zip(sharded["terms"], single["terms"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    assert single["terms"][-1]["str_anchor"] > 0


@pytest.mark.parametrize("anchor_pass", ["packed", "separate"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_terms_and_gradients(tokenizer, anchor_pass, reentrant):
    """The hidden-state hook sees the forward once (not the recomputation), and the backward through recomputed
    layers carries the same gradients."""
    results = []
    for checkpointing in (False, True):
        model = tiny_llama(tokenizer)
        cache = build_anchor_cache(model, tokenizer, REFUSALS * 2, safety_tokens(tokenizer))
        model = lora(model)
        perturb_lora(model, 0.3)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            model.enable_input_require_grads()
        model.train()
        config = STRConfig("mse", 1.0, reference="both", anchors_per_step=6, anchor_pass=anchor_pass)
        terms = str_loss(
            model, task_batch(tokenizer, BENIGN[:4]), STRObjective(config, safety_tokens(tokenizer), cache)
        )
        terms.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((terms, grads))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    for name in ("loss", "str_anchor", "str_task"):
        assert getattr(checkpointed, name).item() == pytest.approx(getattr(plain, name).item(), abs=1e-6)
    assert checkpointed_grads.keys() == plain_grads.keys() and plain_grads
    for key, grad in plain_grads.items():
        assert torch.allclose(checkpointed_grads[key], grad, atol=1e-6), key


GPUS = torch.cuda.device_count()


def accelerate_config(tmp_path: Path, name: str, processes: int) -> Path:
    """A repository launch config (``configs/accelerate``) for ``processes`` GPUs of this machine, fp32."""
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "accelerate" / name).read_text())
    config |= {"num_processes": processes, "mixed_precision": "no"}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.skipif(GPUS < 2 or shutil.which("accelerate") is None, reason="needs 2 CUDA GPUs and accelerate")
@pytest.mark.parametrize(
    ("name", "engine"), [("fsdp2.yaml", "torch"), ("deepspeed_zero3.yaml", "deepspeed")], ids=["fsdp2", "zero3"]
)
def test_the_trainer_under_a_sharding_engine_matches_one_process(workspace, tmp_path, name, engine):
    """GPU only (not run on CPU, where Accelerate turns FSDP into DDP): ``logitguard train`` launched through the
    repository's launch config on 2 GPUs against 1 process with the same global batch."""
    pytest.importorskip(engine)
    run = workspace / "run.yaml"
    common = ["training.use_cpu=false", "str.anchors_per_step=4", "training.max_steps=3"]
    single = tmp_path / "single"
    done = subprocess.run(
        [sys.executable, "-m", "logitguard.cli", "train", "--config", str(run), f"output_dir={single}", *common],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = tmp_path / "sharded"
    launch = ["accelerate", "launch", "--config_file", str(accelerate_config(tmp_path, name, 2))]
    command = [*launch, "-m", "logitguard.cli", "train", "--config", str(run), f"output_dir={sharded}", *common]
    done = subprocess.run(
        [*command, "training.per_device_train_batch_size=2"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logs = [json.loads((out / "train_log.json").read_text()) for out in (single, sharded)]
    terms = [[e["str_anchor"] for e in log if "str_anchor" in e] for log in logs]
    assert terms[0] == pytest.approx(terms[1], rel=1e-3) and terms[0][-1] > 0


@pytest.mark.skipif(not GPUS, reason="QLoRA's 4-bit kernels need a CUDA GPU (on CPU it is one line: test_train_cli)")
def test_qlora_trains_with_str_on_the_unquantised_head(workspace, tmp_path):
    pytest.importorskip("bitsandbytes")
    from logitguard.cli.main import main

    out = tmp_path / "qlora"
    args = ["train", "--config", str(workspace / "run.yaml"), f"output_dir={out}", "model.load_in_4bit=true"]
    assert main([*args, "training.use_cpu=false"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    assert any(e.get("str_anchor", 0) > 0 for e in log)
