"""STR's cost against its protection on the real model: one point per setting, the frontier a default is chosen on.

Run: python -m benchmarks.frontier [--plot]
(Reads what two other benchmarks measured: the paired step-time ratios of ``str_overhead --preset
qwen2.5-coder-0.5b --frontier`` and the protection of the same settings' rows in ``real_qwen``, 40 GSM8K steps
each: ``python -m benchmarks.real_qwen --methods NAME ... --seeds 0``. Writes nothing but the plot.)

A setting's cost is its step time over SFT's in the same process, round robin (``str_overhead``); its protection
is harmful refusal with look-alike and ordinary over-refusal on the held-out public sets, and the GSM8K answer NLL
(mean over the seeds run). The default must cost at most 1.10× SFT's step with refusal within 3 points of the
current default's and over-refusal no higher.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PRESET = "qwen2.5-coder-0.5b cpu float32"
ROW_OF = {  # str_overhead's variant -> real_qwen's row of the same settings
    "sft": "sft",
    "str (default: packed pass)": "str (anchors, default)",
    "PACT-style restricted KL (T=2)": "PACT-style restricted KL (λ=1, T=2)",
}
PROTECTION = {
    "harmful_refusal": "harmful refusal",
    "lookalike_over_refusal": "over-refusal (look-alikes)",
    "benign_over_refusal": "over-refusal (benign)",
    "task_nll": "GSM8K answer NLL",
}


def points(overhead: dict, qwen: dict) -> list[dict]:
    """Every setting with a paired cost: its cost and, where its row has run, its protection (mean over seeds)."""
    found = []
    for name, measured in overhead["runs"][PRESET]["variants"].items():
        row = ROW_OF.get(name, name)
        runs = [r for r in qwen["rows"] if r["method"] == row and r["scenario"].startswith("benign")]
        point = {"setting": name, "time": measured["time_vs_sft"], "seeds": sorted(r["seed"] for r in runs)}
        point["peak"] = measured["peak_mib"] / overhead["runs"][PRESET]["variants"]["sft"]["peak_mib"]
        for key in PROTECTION:
            point[key] = statistics.mean(r[key] for r in runs) if runs else None
        found.append(point)
    return found


def table(overhead: dict) -> str:
    """The frontier as a table (``<!-- table: frontier str_overhead.json -->``; protection read from real_qwen.json)."""
    if PRESET not in overhead["runs"]:
        return "_No paired Qwen timings yet: run the command above._"
    qwen = json.loads((RESULTS / "real_qwen.json").read_text(encoding="utf-8"))
    aligned = qwen["aligned"]
    header = ["setting", "× SFT time (paired)", "× SFT peak memory", "seeds", *PROTECTION.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [f"{100 * aligned[k]:.1f}%" if k != "task_nll" else f"{aligned[k]:.3f}" for k in PROTECTION]
    lines.append("| aligned model (before fine-tuning) | — | — | — | " + " | ".join(cells) + " |")
    for p in points(overhead, qwen):
        cells = [
            "—" if p[k] is None else f"{p[k]:.3f}" if k == "task_nll" else f"{100 * p[k]:.1f}%" for k in PROTECTION
        ]
        seeds = ", ".join(map(str, p["seeds"])) or "—"
        lines.append(f"| {p['setting']} | {p['time']:.3f} | {p['peak']:.3f} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overhead = json.loads((RESULTS / "str_overhead.json").read_text(encoding="utf-8"))
    qwen = json.loads((RESULTS / "real_qwen.json").read_text(encoding="utf-8"))
    found = [p for p in points(overhead, qwen) if p["harmful_refusal"] is not None]
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    for p in found:
        axis.scatter(p["time"], p["harmful_refusal"], s=30 + 300 * p["lookalike_over_refusal"], alpha=0.7)
        axis.annotate(
            p["setting"], (p["time"], p["harmful_refusal"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    axis.axhline(qwen["aligned"]["harmful_refusal"], color="grey", linestyle=":", label="aligned model")
    axis.axvline(1.10, color="grey", linestyle="--", label="1.10× SFT")
    axis.set_xlabel("step time against SFT's (paired, 2 CPU cores)")
    axis.set_ylabel("held-out harmful refusal after 40 GSM8K steps")
    axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axis.set_title("Qwen2.5-Coder-0.5B: cost against protection (marker size: look-alike over-refusal)", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plot", action="store_true", help="also write results/frontier.png")
    args = parser.parse_args(argv)
    print(table(json.loads((RESULTS / "str_overhead.json").read_text(encoding="utf-8"))))
    if args.plot:
        print(plot(RESULTS / "frontier.png"))


if __name__ == "__main__":
    main()
