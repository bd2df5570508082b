"""Safety against task accuracy, one point per method and seed, from a methods-style results JSON.

Run: python -m benchmarks.safety_vs_task [--results benchmarks/results/methods.json] [--out FILE.png]
(a second; matplotlib only.) One panel per scenario; held-out harmful refusal (refusals that end) on the vertical
axis, task accuracy on the horizontal one: top right is best. The methods shown are STR, sample selection and their
combinations, and the references (plain SFT, SafeInstr), so the question "do the two together beat either alone"
reads off the picture.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.harness import SCENARIOS

SHOWN = (
    "sft",
    "str (anchors, default)",
    "SafeInstr (+3% refusals)",
    "selection (drop 10%, gradient norm)",
    "selection (gradient norm) + str",
    "selection (refusal score ≥ 0.1)",
    "selection (refusal score ≥ 0.1) + str",
)


def plot(results: dict, out: Path, task_key: str = "task_accuracy") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from logitguard.io import atomic_write

    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in results["rows"])]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4.5), squeeze=False)
    markers = "osD^v<>P"
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        for i, method in enumerate(SHOWN):
            rows = [r for r in results["rows"] if r["scenario"] == scenario and r["method"] == method]
            if rows:
                x = [100 * r[task_key] for r in rows]
                y = [100 * r["harmful_refusal"] for r in rows]
                ax.scatter(x, y, marker=markers[i % len(markers)], s=55, alpha=0.8, label=method)
        ax.set(xlabel="task accuracy (%)", ylabel="held-out harmful refusal (%)", xlim=(-5, 105), ylim=(-5, 105))
        ax.set_title(scenario.split(" (")[0] + " fine-tuning")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results = Path(__file__).parent / "results"
    parser.add_argument("--results", type=Path, default=results / "methods.json")
    parser.add_argument("--out", type=Path, default=results / "safety_vs_task.png")
    args = parser.parse_args(argv)
    path = plot(json.loads(args.results.read_text(encoding="utf-8")), args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
