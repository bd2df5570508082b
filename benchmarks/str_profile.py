"""Where a training step spends its time: a ``torch.profiler`` breakdown of STR's step against plain SFT's.

Run: python -m benchmarks.str_profile [--preset toy|tiny-32k] [--steps 4] [--variants NAME ...]
     python -m benchmarks.str_profile --preset qwen2.5-coder-0.5b --work real-qwen-work --steps 2 --warmup 1
GPU: python -m benchmarks.str_profile --device cuda --dtype bfloat16 --preset llama-1b
     python -m benchmarks.str_profile --table
(a minute or two per preset on 2 CPU cores.) Results are merged into ``benchmarks/results/str_profile.json``.

The workloads are ``str_overhead``'s (the same model, data, anchors and trainer). After ``--warmup`` steps, each
variant's next ``--steps`` steps run under the profiler, each step split into regions by ``record_function``
labels: ``step: forward`` (the host's ``compute_loss``: its forward pass, with the packed anchors when they share
it, and the STR terms), ``step: backward``, ``step: optimizer``; inside the forward, LogitGuard's own regions:
``str: anchor layout`` (host-side work: the step's anchor draw, the packing plan, index and reference tensors and
their copies to the device), ``str: separate pass`` (a separate anchor forward), ``str: anchor penalty`` (output
rows, buckets, log-normaliser, KL), within it ``str: log-normaliser`` (the full-vocabulary head at the anchor
positions), ``str: task reference`` (the adapters-off pass), and ``mask: causal`` (the attention mask
``transformers`` builds for each forward: from the packed rows' ``position_ids``, a block-diagonal one). What the
anchor tokens cost in the decoder is the forward and backward time left over: the packed variant's forward and
backward beyond SFT's, less these regions. Times are the regions' inclusive wall times per step (CPU time on CPU;
the GPU's own kernels under ``--device cuda``), and host synchronisations are counted as calls of
``aten::_local_scalar_dense`` (``.item()``, ``float()``, ``.tolist()`` of a tensor, and the conditionals that read
one).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

from benchmarks.str_overhead import PRESETS, VARIANTS, Settings, artifacts_of, device_name, make_trainer, workload

REGIONS = (
    "step: forward",
    "step: backward",
    "step: optimizer",
    "str: anchor layout",
    "str: separate pass",
    "str: anchor penalty",
    "str: log-normaliser",
    "str: task reference",
    "mask: causal",
)
SYNC = "aten::_local_scalar_dense"
SHOWN = ["sft", "str (default: packed pass)", "str, separate anchor pass"]
RESULTS = Path(__file__).parent / "results" / "str_profile.json"


def profile_variant(name: str, s: Settings, artifacts: str | None, queue: mp.Queue) -> None:
    """Profile ``s.steps`` steps of one variant after ``s.warmup``; put its per-step region times on ``queue``."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    work = workload(s, artifacts)
    trainer = make_trainer(name, s, work)
    model = trainer.model
    label_mask_building(record_function)

    def step(batch: dict) -> None:
        num_items = (batch["labels"][:, 1:] != -100).sum()
        with record_function("step: forward"):
            loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        with record_function("step: backward"):
            trainer.accelerator.backward(loss)
        with record_function("step: optimizer"):
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    model.train()
    for batch in work.batches[: s.warmup]:
        step(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for batch in work.batches[s.warmup :]:
            step(batch)
        if s.device == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / s.steps
    events = {e.key: e for e in prof.key_averages()}
    device_time = "device_time_total" if s.device == "cuda" else "cpu_time_total"
    regions = {r: getattr(events[r], device_time) / 1000 / s.steps for r in REGIONS if r in events}
    syncs = events[SYNC].count / s.steps if SYNC in events else 0.0
    queue.put({"wall_ms": 1000 * wall, "regions_ms": regions, "host_syncs": syncs})


def label_mask_building(record_function) -> None:
    """Wrap ``create_causal_mask`` wherever a loaded ``transformers`` model module calls it, in a profiler region."""
    import functools
    import sys

    for module in [m for name, m in sys.modules.items() if name.startswith("transformers.models.")]:
        original = getattr(module, "create_causal_mask", None)
        if original is None or getattr(original, "labelled", False):
            continue

        @functools.wraps(original)
        def labelled(*args, _original=original, **kwargs):
            with record_function("mask: causal"):
                return _original(*args, **kwargs)

        labelled.labelled = True
        module.create_causal_mask = labelled


def measure(name: str, s: Settings, artifacts: str | None) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=profile_variant, args=(name, s, artifacts, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def table(results: dict) -> str:
    """One table per preset: per variant, each region's ms per step and the host synchronisations."""
    lines = []
    for key, run in results["runs"].items():
        s = run["settings"]
        lines += [
            f"{key}: {s['steps']} profiled steps after {s['warmup']} (batch {s['batch']}"
            + (
                " of the toy's benign data"
                if s["preset"] == "toy"
                else f" of {s['preset']}'s GSM8K rows"
                if s["preset"] not in ("tiny-32k", "tiny-128k", "llama-1b", "llama-8b")
                else f" × {s['seq']} tokens"
            )
            + f", {s['anchors_per_step']} anchors per step) on {run['device_name']}, measured {run['measured']}",
            "",
            "| variant | ms / step | " + " | ".join(r.split(": ")[1] for r in REGIONS) + " | host syncs / step |",
            "|---" * (len(REGIONS) + 3) + "|",
        ]
        for name, v in run["variants"].items():
            cells = [f"{v['regions_ms'][r]:.0f}" if r in v["regions_ms"] else "—" for r in REGIONS]
            lines.append(f"| {name} | {v['wall_ms']:.0f} | " + " | ".join(cells) + f" | {v['host_syncs']:.0f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: 16 on the toy, else 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--anchors-per-step", type=int, default=8)
    parser.add_argument("--anchor-length", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--variants", nargs="+", default=SHOWN, choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("real-qwen-work"), help="real presets: real_qwen's --work")
    parser.add_argument("--data-root", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the tables of --out and stop")
    a = parser.parse_args(argv)
    if a.table:
        from benchmarks.harness import show_table

        return show_table(a.out, table)
    from logitguard.io import write_json

    batch = a.batch or (16 if a.preset == "toy" else 8)
    s = Settings(
        a.preset,
        a.seq,
        batch,
        a.steps,
        a.warmup,
        a.anchors_per_step,
        a.anchor_length,
        a.k,
        a.device,
        a.dtype,
        data_root=str(a.data_root),
    )
    artifacts = artifacts_of(a.preset, a.work)
    results = json.loads(a.out.read_text(encoding="utf-8")) if a.out.is_file() else {"runs": {}}
    key = f"{a.preset} {a.device} {a.dtype}"
    run = {"settings": vars(s), "measured": time.strftime("%Y-%m-%d"), **device_name(a.device), "variants": {}}
    for name in a.variants:
        run["variants"][name] = measure(name, s, artifacts)
        print(name, run["variants"][name], flush=True)
        results["runs"][key] = run
        write_json(a.out, results)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
