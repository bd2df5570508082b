"""What each sample-selection score drops on the demo's data, by kind of sample, and why.

Run: python -m benchmarks.selection_breakdown [--seed 0] [--fraction 0.1]
     python -m benchmarks.selection_breakdown --table
(about 5 minutes on 2 CPU cores once the toy models are cached; rows go to
``benchmarks/results/selection_breakdown.json``.)

Scores the benign fine-tuning set, and the same set with 5% harmful-prompt + compliant-answer pairs mixed in (as in
``benchmarks/methods.py``), on the fresh LoRA adapter that training would use, with each score: the whole-answer
gradient norm (the companion paper's), the safety score, the first-token gradient norm (the NLL of the first five
response tokens) and the refusal score (the aligned model's safety-token mass where the answer starts). Gradient
scores drop the top ``fraction``; the refusal score drops every sample at or above the benchmarks' threshold
(``harness.DROP_REFUSED``). Gives, per kind of sample, how many there are, how many are dropped, the median loss,
gradient norm and refusal score, and the refusal score's range; the seconds each score took is beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import DROP_REFUSED, show_table

RULES = {
    "gradient-norm": "fraction",
    "safety": "fraction",
    "first-tokens": "fraction",
    "refusal": f"threshold {DROP_REFUSED.threshold}",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N samples of each data set")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "selection_breakdown.json")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        return show_table(args.out, table)

    from benchmarks.harness import select_examples, toy_harmful_compliance
    from logitguard.baselines import mix_safety_examples
    from logitguard.io import write_json
    from logitguard.lab.demo import DemoConfig, set_up
    from logitguard.lab.finetune import lora_model
    from logitguard.selection import SelectionConfig

    work = Path(tempfile.mkdtemp(prefix="logitguard-selection-"))
    config = DemoConfig().with_seed(args.seed)
    setup = set_up(config, work)
    setting = setup.setting
    kinds = {(e.prompt, e.response): e.kind for e in setting.corpus.instruct}
    kinds = {
        pair: {"benign": "benign answers", "task": "new task", "skill": "everyday skills"}[k]
        for pair, k in kinds.items()
    }
    harmful = toy_harmful_compliance(setting)
    kinds |= {pair: "harmful compliance" for pair in harmful}
    results = {"seed": args.seed, "fraction": args.fraction, "rows": []}
    for scenario, share in (("benign", 0.0), ("+5% harmful", 0.05)):
        examples = mix_safety_examples(setting.benign_data(), harmful, share, args.seed)[: args.limit]
        for score, rule in RULES.items():
            model = lora_model(setting, config.finetune)
            selection = SelectionConfig(args.fraction, score, batch_size=16) if rule == "fraction" else DROP_REFUSED
            scores = work / f"{scenario}-{score}.jsonl"
            start = time.perf_counter()
            select_examples(model, setup, examples, selection, scores, {})
            seconds = time.perf_counter() - start
            records = [json.loads(line) for line in scores.read_text().splitlines()]
            for kind in dict.fromkeys(kinds.values()):
                rows = [r for r in records if kinds[examples[r["index"]]] == kind]
                if rows:
                    results["rows"].append(
                        {
                            "data": scenario,
                            "score": score,
                            "rule": rule,
                            "kind": kind,
                            "samples": len(rows),
                            "dropped": sum(not r["kept"] for r in rows),
                            "seconds": seconds,
                            **{
                                f"median_{key}": statistics.median(r[key] for r in rows)
                                for key in ("loss", "grad_norm", "refusal")
                                if key in rows[0]
                            },
                            "refusal_range": [min(r["refusal"] for r in rows), max(r["refusal"] for r in rows)],
                        }
                    )
            write_json(args.out, results)
    print(table(results))
    return results


def table(results: dict) -> str:
    lines = [
        "| data | score (rule) | kind | samples | dropped | loss | grad norm | refusal score | its range |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        grad = f"{r['median_grad_norm']:.2f}" if "median_grad_norm" in r else "—"
        spread = "{:.3f}–{:.3f}".format(*r["refusal_range"]) if "refusal_range" in r else "—"
        lines.append(
            f"| {r['data']} | {r['score']} ({r['rule']}) | {r['kind']} | {r['samples']} | {r['dropped']} | "
            f"{r['median_loss']:.2f} | {grad} | {r['median_refusal']:.3f} | {spread} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
