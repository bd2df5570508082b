"""STR settings side by side on the demo's toy model and task, over several seeds.

Run: python benchmarks/str_settings.py [--seeds 0 1 2] [--out DIR]
(about 90 s per fine-tuning run on 2 CPU cores once the toy models are cached).
Prints one markdown table (mean ± std over seeds) and writes the per-seed rows
to DIR/str_settings.json. The toy models stay fixed (recipe seed 0); the seed
varies LoRA initialisation, data order and anchor sampling. The first STR row
is the demo's default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from logitguard.demo import METRIC_LABELS, DemoConfig, finetune, set_up
from logitguard.io import write_json
from logitguard.regularizer import STRConfig

DEFAULT = DemoConfig().str_config
SETTINGS: dict[str, STRConfig | None] = {
    "sft": None,
    "str (default: kl, λ=0.3, rest bucket)": DEFAULT,
    "str kl, λ=0.3, no rest bucket": replace(DEFAULT, rest_bucket=False),
    "str kl, λ=1, rest bucket": replace(DEFAULT, weight=1.0),
    "str mse, λ=1, rest bucket": replace(DEFAULT, penalty="mse", weight=1.0),
}
COLUMNS = [*METRIC_LABELS, "step_time_ms"]


def cell(values: list[float], key: str) -> str:
    mean, std = statistics.mean(values), statistics.pstdev(values)
    return f"{mean:.0f} ± {std:.0f}" if key == "step_time_ms" else f"{100 * mean:.1f} ± {100 * std:.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="logitguard-str-settings-"))

    config = DemoConfig()
    setup = set_up(config, out)
    rows = {"aligned": [setup.aligned["metrics"]]}
    for name, str_config in SETTINGS.items():
        rows[name] = []
        for seed in args.seeds:
            run_dir = out / f"{len(rows) - 1}-seed{seed}"
            result = finetune("run", config.with_seed(seed), setup, run_dir, str_config)
            rows[name].append(result["metrics"])
            print(f"{name} seed {seed}: {result['metrics']}", flush=True)

    print(f"\nseeds {args.seeds}, mean ± std (aligned: one deterministic evaluation)\n")
    print("| model | " + " | ".join([*METRIC_LABELS.values(), "ms / step"]) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, runs in rows.items():
        cells = [cell([r[key] for r in runs], key) if key in runs[0] else "—" for key in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    settings = {name: (vars(c) if c else None) for name, c in SETTINGS.items()}
    write_json(out / "str_settings.json", {"seeds": args.seeds, "settings": settings, "rows": rows})
    print(f"\nper-run artifacts and str_settings.json in {out}")


if __name__ == "__main__":
    main()
