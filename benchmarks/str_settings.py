"""STR settings side by side on the demo's toy model and task, over several seeds.

Run: python benchmarks/str_settings.py [--seeds 0 1 2] [--settings NAME ...] [--update FILE] [--out DIR]
(about 90 s per fine-tuning run on 2 CPU cores once the toy models are cached).
Prints one markdown table (mean ± std over seeds) and writes the per-seed rows
to DIR/str_settings.json (``--update FILE``: merged into FILE, replacing the
settings rerun). The toy models stay fixed (recipe seed 0); the seed varies
LoRA initialisation, data order and anchor sampling. The first STR row is the
demo's default; rows with another k discover their own k safety tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from logitguard.demo import METRIC_LABELS, DemoConfig, finetune, set_up
from logitguard.io import write_json
from logitguard.regularizer import STRConfig

DEFAULT, K = DemoConfig().str_config, DemoConfig().k
SETTINGS: dict[str, tuple[STRConfig | None, int]] = {  # STR settings and the number of safety tokens
    "sft": (None, K),
    "str (default: kl, λ=0.3, rest bucket)": (DEFAULT, K),
    "str kl, λ=0.3, no rest bucket": (replace(DEFAULT, rest_bucket=False), K),
    "str kl, λ=1, rest bucket": (replace(DEFAULT, weight=1.0), K),
    "str mse, λ=1, rest bucket": (replace(DEFAULT, penalty="mse", weight=1.0), K),
    "str, k=8": (DEFAULT, 8),
    "str, k=64": (DEFAULT, 64),
    "str, 2 anchors a step": (replace(DEFAULT, anchors_per_step=2), K),
    "str, anchors every 4th step": (replace(DEFAULT, anchor_every=4), K),
}
COLUMNS = [*METRIC_LABELS, "step_time_ms"]


def cell(values: list[float], key: str) -> str:
    mean, std = statistics.mean(values), statistics.pstdev(values)
    return f"{mean:.0f} ± {std:.0f}" if key == "step_time_ms" else f"{100 * mean:.1f} ± {100 * std:.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--update", type=Path, default=None, help="an earlier str_settings.json to merge into")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="logitguard-str-settings-"))

    config = DemoConfig()
    setups = {K: set_up(config, out)}
    rows = json.loads(args.update.read_text())["rows"] if args.update else {}
    rows["aligned"] = [setups[K].aligned["metrics"]]
    for name in args.settings:
        str_config, k = SETTINGS[name]
        if k not in setups:
            setups[k] = set_up(replace(config, k=k), out / f"k{k}")
        rows[name] = []
        for seed in args.seeds:
            run_dir = out / f"{list(SETTINGS).index(name)}-seed{seed}"
            result = finetune("run", config.with_seed(seed), setups[k], run_dir, str_config)
            rows[name].append(result["metrics"])
            print(f"{name} seed {seed}: {result['metrics']}", flush=True)
    rows = {name: rows[name] for name in ["aligned", *SETTINGS] if name in rows}

    print(f"\nseeds {args.seeds}, mean ± std (aligned: one deterministic evaluation)\n")
    print("| model | " + " | ".join([*METRIC_LABELS.values(), "ms / step"]) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, runs in rows.items():
        cells = [cell([r[key] for r in runs], key) if key in runs[0] else "—" for key in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    settings = {name: {"str": vars(c) if c else None, "k": k} for name, (c, k) in SETTINGS.items() if name in rows}
    path = write_json(
        args.update or out / "str_settings.json", {"seeds": args.seeds, "settings": settings, "rows": rows}
    )
    print(f"\nper-run artifacts in {out}; rows in {path}")


if __name__ == "__main__":
    main()
