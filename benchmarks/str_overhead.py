"""Wall time per optimizer step and peak memory of STR next to plain LoRA SFT, at equal batch.

Run: python -m benchmarks.str_overhead [--preset tiny-32k] [--seq 512] [--batch 8] [--repeats 3]
GPU: python -m benchmarks.str_overhead --device cuda --dtype bfloat16 --preset llama-1b
     python -m benchmarks.str_overhead --table
(CPU defaults take a few minutes on 2 cores.) Each invocation's results are merged into
``benchmarks/results/str_overhead.json`` under its preset, device and dtype.

A random-weight Llama with a realistic vocabulary is trained with LoRA through
the real ``Trainer.training_step`` (forward, loss, backward) plus the optimizer
step, for plain SFT and each STR variant. Every (variant, repeat) runs in a
fresh process, variants interleaved within each repeat, so the ratios are
measured side by side. A repeat's time is the mean over its steps (``--steps`` a multiple of 4, so a variant
that runs anchors every 4th step pays for them; a median would hide them); the table gives the median over
repeats. Peak memory is
``torch.cuda.max_memory_allocated`` on GPU and the process's peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PRESETS = {
    "tiny-32k": {"vocab": 32000, "hidden": 256, "layers": 4, "heads": 4, "intermediate": 1024},
    "tiny-128k": {"vocab": 128256, "hidden": 256, "layers": 4, "heads": 4, "intermediate": 1024},
    "llama-1b": {"vocab": 128256, "hidden": 2048, "layers": 16, "heads": 32, "intermediate": 8192},
    "llama-8b": {"vocab": 128256, "hidden": 4096, "layers": 32, "heads": 32, "intermediate": 14336},
}
VARIANTS = {
    "sft": None,
    "str anchors (auto pass)": {"reference": "anchors"},
    "str anchors (shared pass)": {"reference": "anchors", "anchor_pass": "shared"},
    "str anchors every 4th step": {"reference": "anchors", "anchor_every": 4},
    "str task reference": {"reference": "task"},
}


@dataclass
class Settings:
    preset: str
    seq: int
    batch: int
    steps: int
    warmup: int
    anchors_per_step: int
    anchor_length: int
    k: int
    device: str
    dtype: str


def run_variant(name: str, s: Settings, queue: mp.Queue) -> None:
    """Train ``s.warmup + s.steps`` steps of one variant; put (mean seconds per step, peak bytes) on ``queue``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.model_access import model_fingerprint
    from logitguard.core.objective import STRConfig
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.hosts.trainer import STRTrainer

    p = PRESETS[s.preset]
    torch.manual_seed(0)
    dtype = getattr(torch, s.dtype)
    config = LlamaConfig(
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["heads"],
        max_position_embeddings=max(s.seq, s.anchor_length),
    )
    with torch.device(s.device):
        model = LlamaForCausalLM(config).to(dtype)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    ids = torch.arange(100, 100 + s.k)
    tokens = SafetyTokens(ids.tolist(), [str(i) for i in ids.tolist()], [1.0] * s.k, "benchmark")
    n_anchors, length = 64, s.anchor_length
    target = torch.zeros(n_anchors, length, dtype=torch.bool)
    target[:, length // 2 : -1] = True
    anchors = AnchorCache(
        input_ids=torch.randint(0, p["vocab"], (n_anchors, length)),
        attention_mask=torch.ones(n_anchors, length, dtype=torch.long),
        target_mask=target,
        ref_logits=torch.randn(n_anchors, length, s.k) * target.unsqueeze(-1),
        ref_logsumexp=torch.randn(n_anchors, length) * target,
        ref_target_logits=torch.randn(n_anchors, length) * target,
        token_ids=ids,
        model_fingerprint=model_fingerprint(model, ids),
    )
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=s.batch,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=s.device == "cpu",
        bf16=s.dtype == "bfloat16",
    )
    if VARIANTS[name] is None:
        trainer = Trainer(model=model, args=args)
    else:
        str_config = STRConfig(penalty="kl", weight=0.3, anchors_per_step=s.anchors_per_step, **VARIANTS[name])
        trainer = STRTrainer(model=model, args=args, str_config=str_config, safety_tokens=tokens, anchors=anchors)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    input_ids = torch.randint(0, p["vocab"], (s.batch, s.seq), device=s.device)
    labels = input_ids.clone()
    labels[:, : s.seq // 2] = -100  # completion-only loss on the second half
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    num_items = (labels[:, 1:] != -100).sum()

    def sync() -> None:
        if s.device == "cuda":
            torch.cuda.synchronize()

    times = []
    for step in range(s.warmup + s.steps):
        if step == s.warmup and s.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        trainer.training_step(trainer.model, dict(batch), num_items)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
        trainer.state.global_step += 1
    if s.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put((statistics.mean(times[s.warmup :]), peak))


def measure(name: str, s: Settings) -> tuple[float, int]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_variant, args=(name, s, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny-32k")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--anchors-per-step", type=int, default=8)
    parser.add_argument("--anchor-length", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "str_overhead.json")
    parser.add_argument("--table", action="store_true", help="print the tables of --out and stop")
    a = parser.parse_args(argv)
    if a.table:
        print(table(json.loads(a.out.read_text(encoding="utf-8"))))
        return
    s = Settings(
        a.preset, a.seq, a.batch, a.steps, a.warmup, a.anchors_per_step, a.anchor_length, a.k, a.device, a.dtype
    )
    from logitguard.io import write_json

    key = f"{a.preset} {a.device} {a.dtype}"
    earlier = json.loads(a.out.read_text(encoding="utf-8")) if a.out.is_file() else {"runs": {}}
    device = device_name(a.device)
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in a.variants}
    for repeat in range(a.repeats):
        for name in a.variants:
            results[name].append(measure(name, s))
            seconds, peak = results[name][-1]
            print(f"repeat {repeat} {name}: {1000 * seconds:.0f} ms/step, peak {peak / 2**20:.0f} MiB", flush=True)
            earlier["runs"][key] = summary(s, a.repeats, results) | device  # a stopped run keeps it
            write_json(a.out, earlier)
    print(table(earlier))


def device_name(device: str) -> dict:
    import torch

    return {"device_name": torch.cuda.get_device_name()} if device == "cuda" else {}


def summary(s: Settings, repeats: int, results: dict[str, list[tuple[float, int]]]) -> dict:
    """The JSON entry of one preset: medians over the repeats measured so far (each variant lists its own)."""
    return {
        "settings": asdict(s) | {"repeats": repeats, "step_statistic": "mean"} | PRESETS[s.preset],
        "variants": {
            name: {
                "ms_per_step": 1000 * statistics.median(t for t, _ in runs),
                "peak_mib": statistics.median(m for _, m in runs) / 2**20,
                "repeats": [{"ms_per_step": 1000 * t, "peak_mib": m / 2**20} for t, m in runs],
            }
            for name, runs in results.items()
            if runs
        },
    }


def table(results: dict) -> str:
    """One markdown table per measured preset and device, times and peaks against plain SFT's."""
    lines = []
    for key, run in results["runs"].items():
        s, variants = run["settings"], run["variants"]
        lines += [
            f"{key}: vocab {s['vocab']}, hidden {s['hidden']}, {s['layers']} layers, batch {s['batch']} × {s['seq']} "
            f"tokens, LoRA r16, {s['anchors_per_step']} anchors × {s['anchor_length']} tokens per step, k={s['k']}; "
            f"median over repeats of the {s.get('step_statistic', 'median')} over {s['steps']} steps"
            + (f" on {run['device_name']}" if "device_name" in run else ""),
            *([f"({run['note']})"] if "note" in run else []),
            "",
            "| variant | repeats | ms / step | × SFT time | peak MiB | × SFT peak |",
            "|---|---|---|---|---|---|",
        ]
        base = variants.get("sft")
        for name, v in variants.items():
            time_ratio = f"{v['ms_per_step'] / base['ms_per_step']:.3f}" if base else "—"
            peak_ratio = f"{v['peak_mib'] / base['peak_mib']:.3f}" if base else "—"
            cells = f"{len(v['repeats'])} | {v['ms_per_step']:.0f} | {time_ratio} | {v['peak_mib']:.0f} | {peak_ratio}"
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    main()
