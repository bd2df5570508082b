"""What gradient-based selection drops on the demo's data, by kind of sample, and why.

Run: python benchmarks/selection_breakdown.py [--seed 0] [--fraction 0.1]
(about 3 minutes on 2 CPU cores once the toy models are cached)

Scores the benign fine-tuning set, and the same set with 5% harmful-prompt + compliant-answer pairs mixed in (as in
``benchmarks/methods.py``), on the fresh LoRA adapter that training would use, with both scores; prints, per kind of
sample, how many there are, how many the top ``fraction`` drops, and the median loss, gradient norm and safety score.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from logitguard.baselines import mix_safety_examples
from logitguard.demo import DemoConfig, lora_model, select_examples, set_up
from logitguard.selection import SelectionConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="logitguard-selection-"))
    config = DemoConfig().with_seed(args.seed)
    setup = set_up(config, work)
    task = [(e.prompt, e.response) for e in setup.corpus.instruct]
    kinds = {(e.prompt, e.response): e.kind for e in setup.corpus.instruct}
    harmful = [(e.prompt, e.response) for e in setup.corpus.base if e.kind == "harmful"]
    kinds |= {pair: "harmful compliance" for pair in harmful}

    print("| data | score | kind | samples | dropped | median loss | median grad norm | median safety |")
    print("|---" * 8 + "|")
    for scenario, share in (("benign", 0.0), ("+5% harmful", 0.05)):
        examples = mix_safety_examples(task, harmful, share, args.seed)
        for score in ("gradient-norm", "safety"):
            model = lora_model(setup.aligned_path, config)
            selection = SelectionConfig(args.fraction, score, batch_size=16)
            scores = work / f"{scenario}-{score}.jsonl"
            select_examples(model, setup, examples, selection, scores, {})
            records = [json.loads(line) for line in scores.read_text().splitlines()]
            for kind in dict.fromkeys(kinds.values()):
                rows = [r for r in records if kinds[examples[r["index"]]] == kind]
                if not rows:
                    continue
                medians = [statistics.median(r[key] for r in rows) for key in ("loss", "grad_norm")]
                safety = f"{statistics.median(r['safety'] for r in rows):.3f}" if score == "safety" else "—"
                dropped = sum(not r["kept"] for r in rows)
                print(
                    f"| {scenario} | {score} | {kind} | {len(rows)} | {dropped} | {medians[0]:.2f} | "
                    f"{medians[1]:.2f} | {safety} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
