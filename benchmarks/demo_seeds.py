"""The demo's table over several fine-tuning seeds: mean ± std of each metric.

Run: python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out DIR]
(about 75 s per seed on 2 CPU cores once the toy models are cached). The toy
models stay fixed (recipe seed 0); the seed varies LoRA initialisation, data
order and anchor sampling.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from logitguard.demo import METRIC_LABELS, DemoConfig, run_demo
from logitguard.io import write_json
from logitguard.training import TrainConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="where each seed's demo run is written")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="logitguard-seeds-"))

    runs = []
    for seed in args.seeds:
        default = DemoConfig()
        config = DemoConfig(seed=seed, train=TrainConfig(**{**vars(default.train), "seed": seed}))
        runs.append(run_demo(config, out / f"seed{seed}")["models"])

    columns = [*METRIC_LABELS, "step_time_ms"]
    print(f"seeds {args.seeds}: mean ± std")
    print("| model | " + " | ".join([*METRIC_LABELS.values(), "ms / step"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    summary = {}
    for name in runs[0]:
        cells, summary[name] = [], {}
        for key in columns:
            values = [run[name][key] for run in runs if key in run[name]]
            if not values:
                cells.append("—")
                continue
            mean, std = statistics.mean(values), statistics.pstdev(values)
            summary[name][key] = {"mean": mean, "std": std, "values": values}
            scale, unit = (1, "") if key == "step_time_ms" else (100, "%")
            cells.append(f"{scale * mean:.1f} ± {scale * std:.1f}{unit}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    write_json(out / "seeds.json", {"seeds": args.seeds, "models": summary})
    print(f"\nper-seed runs and seeds.json in {out}")


if __name__ == "__main__":
    main()
