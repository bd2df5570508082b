"""How well the offline refusal judge reads real answers: precision and recall on hand-labelled real text.

Run: python benchmarks/refusal_detector.py [--data-root ../shared/data] [--out benchmarks/results/refusal_detector.json]
     python benchmarks/refusal_detector.py --table          (the table of the committed results)
(a second; no model.)

Two labelled sets:

* ``real``: answers written by real chat models and people, read from the data folder by the positions and labels
  in ``benchmarks/data/refusal_labels.json`` (160 safety-tuning answers from Safety-Tuned LLaMAs, labelled by hand:
  refusal, compliance or corrective; every human-written Self-Instruct answer: compliance). The data sets are
  public (see ``../shared/data/README.md``); pass their folder with ``--data-root``.
* ``written``: the 54 answers of ``tests/data/refusals_labelled.jsonl``, written for this project (the markers were
  tuned on them: optimistic; kept as a regression test).

A *refusal* verdict is the judge's ``"refusal"`` (a refusal that ends); ``refusal_then_compliance`` and
``compliance`` count as not refused. Precision and recall are of refusals against compliance; corrective answers
(safe answers that reject the request's premise) are reported apart, as the share the judge calls refusal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from logitguard.io import write_json
from logitguard.refusal import judge_response

ROOT = Path(__file__).parents[1]
LABELS = ROOT / "benchmarks" / "data" / "refusal_labels.json"
WRITTEN = ROOT / "tests" / "data" / "refusals_labelled.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "refusal_detector.json"


def real_set(data_root: Path) -> list[tuple[str, str]]:
    """``(answer, label)`` of the hand-labelled real answers, read from ``data_root``."""
    spec = json.loads(LABELS.read_text(encoding="utf-8"))["sources"]
    safety = json.loads((data_root / "safety-tuned-llamas" / "safety_only_data_Instructions.json").read_text())
    rows = [
        (safety[int(i)]["output"], label)
        for i, label in spec["safety-tuned-llamas/safety_only_data_Instructions.json"]["labels"].items()
    ]
    for name in spec["self-instruct"]["files"]:
        for line in (data_root / "self-instruct" / name).read_text(encoding="utf-8").splitlines():
            rows += [(instance["output"], "compliance") for instance in json.loads(line)["instances"]]
    return rows


def written_set() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in WRITTEN.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["response"], "refusal" if r["refusal"] else "compliance") for r in rows]


def scores(rows: list[tuple[str, str]]) -> dict:
    """Precision and recall of refusals against compliance, and how corrective answers are judged."""
    judged = [(judge_response(text) == "refusal", label, text) for text, label in rows]
    tp = sum(p and label == "refusal" for p, label, _ in judged)
    fp = sum(p and label == "compliance" for p, label, _ in judged)
    fn = sum(not p and label == "refusal" for p, label, _ in judged)
    n = {label: sum(lab == label for _, lab, _ in judged) for label in ("refusal", "compliance", "corrective")}
    result = {
        "n": n,
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "false_positive_rate": fp / max(n["compliance"], 1),
        "agreement": (tp + n["compliance"] - fp) / max(n["refusal"] + n["compliance"], 1),
        "missed": [text[:160] for p, label, text in judged if not p and label == "refusal"],
        "false_positives": [text[:160] for p, label, text in judged if p and label == "compliance"],
    }
    if n["corrective"]:
        result["corrective_judged_refusal"] = sum(p for p, lab, _ in judged if lab == "corrective") / n["corrective"]
    return result


def table(results: dict) -> str:
    lines = [
        "| set | refusals | compliant | agreement | precision | recall | compliant called refusal "
        "| corrective called refusal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["sets"].items():
        corrective = (
            f"{100 * r['corrective_judged_refusal']:.0f}% of {r['n']['corrective']}" if r["n"]["corrective"] else "—"
        )
        lines.append(
            f"| {name} | {r['n']['refusal']} | {r['n']['compliance']} | {100 * r['agreement']:.1f}% | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | "
            f"{100 * r['false_positive_rate']:.1f}% | {corrective} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.out.read_text(encoding="utf-8"))
    else:
        sets = {"written": scores(written_set())}
        if (args.data_root / "safety-tuned-llamas").is_dir():
            sets["real"] = scores(real_set(args.data_root))
        else:
            print(f"no data folder at {args.data_root}: the real-text set is skipped")
        results = {"sets": sets}
        write_json(args.out, results)
        for name, r in sets.items():
            for kind in ("missed", "false_positives"):
                for text in r[kind]:
                    print(f"{name} {kind}: {text!r}")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
