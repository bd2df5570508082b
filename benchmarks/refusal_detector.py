"""Precision and recall of the offline keyword refusal detector on a labelled set of realistic outputs.

Run: python benchmarks/refusal_detector.py [--data tests/data/refusals_labelled.jsonl]
Prints the figures and every misclassified response. The set was written for this
project (refusals in the styles of common chat models, compliant answers with
marker look-alikes) and the markers were tuned on it: read the figures as optimistic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from logitguard.refusal import is_refusal

DEFAULT = Path(__file__).parents[1] / "tests" / "data" / "refusals_labelled.jsonl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    predicted = [is_refusal(r["response"]) for r in rows]
    tp = sum(p and r["refusal"] for p, r in zip(predicted, rows, strict=True))
    fp = sum(p and not r["refusal"] for p, r in zip(predicted, rows, strict=True))
    fn = sum(not p and r["refusal"] for p, r in zip(predicted, rows, strict=True))
    print(f"{len(rows)} responses ({sum(r['refusal'] for r in rows)} refusals)")
    print("| precision | recall | false positives | false negatives |\n|---|---|---|---|")
    print(f"| {tp / (tp + fp):.3f} | {tp / (tp + fn):.3f} | {fp} | {fn} |")
    for p, r in zip(predicted, rows, strict=True):
        if p != r["refusal"]:
            print(f"{'false positive' if p else 'missed refusal'}: {r['response']!r}")


if __name__ == "__main__":
    main()
