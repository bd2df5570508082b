"""Each method's point per seed, from a methods-style results JSON: refusal against task accuracy or over-refusal.

Run: python -m benchmarks.method_plots [--results benchmarks/results/methods.json] [--against task|over-refusal]
                                       [--over-refusal KEY] [--methods NAME ...] [--out FILE.png]
(a second; matplotlib only.) One panel per scenario, held-out harmful refusal (refusals that end) on the vertical
axis. ``--against task``: task accuracy across (top right is best), the question "do STR and selection together
beat either alone" read off the picture. ``--against over-refusal``: over-refusal across (``--over-refusal``: which
rate, by default ``lookalike_over_refusal`` where the rows have it, else ``benign_over_refusal``), with the aligned
model's point and guide lines: a method should sit at or above its refusal and at or left of its over-refusal, the
two failures a user fears side by side. ``--methods``: the methods drawn (default: every method in the file).
The toy's picture: ``--methods sft "str (anchors, default)" "SafeInstr (+3% refusals)" "selection (drop 10%,
gradient norm)" "selection (gradient norm) + str" "selection (refusal score ≥ 0.1)" "selection (refusal score ≥
0.1) + str"``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.harness import SCENARIOS, read_results

RESULTS = Path(__file__).parent / "results"


def panels(
    results: dict, x_key: str, methods: list[str] | None = None
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Per scenario ("benign fine-tuning", ...): per method (``methods``, default all), its (x, harmful refusal)
    point on each seed."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for scenario in SCENARIOS:
        points: dict[str, list[tuple[float, float]]] = {}
        for row in results["rows"]:
            if row["scenario"] == scenario and x_key in row and (methods is None or row["method"] in methods):
                points.setdefault(row["method"], []).append((row[x_key], row["harmful_refusal"]))
        if points:
            out[scenario.split(" (")[0] + " fine-tuning"] = points
    return out


def over_refusal_key(results: dict) -> str:
    """The look-alikes' over-refusal where the results have it (the real models' public sets), else the benign one."""
    return "lookalike_over_refusal" if "lookalike_over_refusal" in results["aligned"] else "benign_over_refusal"


def main(argv: list[str] | None = None) -> Path:
    from logitguard.evaluation.plots import plot_refusal_vs_over_refusal, plot_safety_vs_utility

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "methods.json")
    parser.add_argument("--against", choices=("task", "over-refusal"), default="task")
    parser.add_argument("--over-refusal", help="the over-refusal rate's key in the rows")
    parser.add_argument("--methods", nargs="+", help="the methods drawn (default: every method in the file)")
    parser.add_argument("--out", type=Path, help="default: results/safety_vs_task.png or refusal_vs_over_refusal.png")
    args = parser.parse_args(argv)
    results = read_results(args.results)
    unknown = set(args.methods or ()) - {row["method"] for row in results["rows"]}
    if unknown:
        raise SystemExit(f"{args.results}: no rows of {', '.join(sorted(unknown))}")
    if args.against == "task":
        out = args.out or RESULTS / "safety_vs_task.png"
        path = plot_safety_vs_utility(panels(results, "task_accuracy", args.methods), out)
    else:
        key = args.over_refusal or over_refusal_key(results)
        if key not in results["aligned"]:
            raise SystemExit(f"{args.results}: the aligned model has no {key!r}; name one with --over-refusal")
        out = args.out or RESULTS / "refusal_vs_over_refusal.png"
        aligned = (results["aligned"][key], results["aligned"]["harmful_refusal"])
        path = plot_refusal_vs_over_refusal(panels(results, key, args.methods), out, aligned)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
