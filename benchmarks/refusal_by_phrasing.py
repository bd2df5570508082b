"""Where fine-tuned models of a methods.py run still refuse: by the phrasing and topic of the harmful request.

Run: python -m benchmarks.refusal_by_phrasing WORK_DIR [--methods NAME ...] [--scenario NAME] [--seeds 0 1 2]
                                             [--steps 200] [--n 200] [--out benchmarks/results/refusal_by_phrasing.json]
     python -m benchmarks.refusal_by_phrasing --table
(WORK_DIR is the per-run folder methods.py prints at its end; a few seconds per model on 2 CPU cores.)

The toy's anchors are harmful requests in training phrasings; the held-out refusal metric uses phrasings *and*
topics never trained on; the harmful fine-tuning scenario mixes in compliant answers to training topics in every
phrasing, held-out phrasings included. Refusal (greedy, keyword detector) on three sets of harmful requests shows
which of these a method's protection covers: training phrasings (those of the anchors), held-out phrasings of
training topics (covered by the mixed-in compliance pairs), and the held-out set itself. Refusal is judged on whole
answers (48 tokens; a refusal that goes on to comply is no refusal). Writes the rates per method and seed to the
results JSON and prints one markdown table, mean ± std over the seeds found.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.harness import SCENARIOS, by_name, cell, run_dir, show_table
from benchmarks.methods import ROWS
from logitguard.evaluation.generation import generate
from logitguard.evaluation.verdicts import refusal_rate
from logitguard.io import write_json
from logitguard.lab.demo import DemoConfig
from logitguard.lab.toy.corpus import build_corpus
from logitguard.lab.toy.model import ToyRecipe, toy_models


def prompt_sets(n: int) -> dict[str, list[str]]:
    """``n`` harmful requests of each kind, drawn with a fixed seed."""
    corpus = build_corpus(ToyRecipe().seed)
    trained_phrasing = {e.prompt for e in corpus.train_harmful}
    base_harmful = [e.prompt for e in corpus.base if e.kind == "harmful"]
    sets = {
        "training phrasing": sorted(trained_phrasing),
        "held-out phrasing, training topic": sorted(p for p in base_harmful if p not in trained_phrasing),
        "held-out phrasing and topic": [e.prompt for e in corpus.heldout_harmful],
    }
    rng = random.Random(0)
    return {name: rng.sample(prompts, min(n, len(prompts))) for name, prompts in sets.items()}


def table(results: dict) -> str:
    sets = results["sets"]
    lines = ["| method | seeds | " + " | ".join(sets) + " |", "|---" * (len(sets) + 2) + "|"]
    for method, per_seed in results["methods"].items():
        rates = {name: [r[name] for r in per_seed.values()] for name in sets}
        seeds = ", ".join(per_seed)
        lines.append(f"| {method} | {seeds} | " + " | ".join(cell(r) for r in rates.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, nargs="?", help="the per-run folder of a methods.py run")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every one found", **by_name(list(ROWS)))
    parser.add_argument("--scenario", default=list(SCENARIOS)[1], **by_name(list(SCENARIOS)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=DemoConfig().finetune.steps, help="the methods.py run's budget")
    parser.add_argument("--n", type=int, default=200, help="requests per set")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "refusal_by_phrasing.json")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        return show_table(args.out, table)
    if args.work is None:
        parser.error("give the WORK_DIR of a methods.py run (or --table)")

    aligned = toy_models(ToyRecipe()).aligned
    tokenizer = AutoTokenizer.from_pretrained(aligned)
    sets = prompt_sets(args.n)
    results = {"scenario": args.scenario, "n": args.n, "sets": list(sets), "methods": {}}
    for method in args.methods or ROWS:
        folders = {seed: run_dir(args.work, method, args.scenario, seed, args.steps) for seed in args.seeds}
        adapters = {seed: folder / "adapter" for seed, folder in folders.items() if (folder / "adapter").is_dir()}
        for seed, adapter in adapters.items():
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(aligned), adapter).eval()
            rates = {name: refusal_rate(generate(model, tokenizer, p, 48, desc=None)) for name, p in sets.items()}
            results["methods"].setdefault(method, {})[str(seed)] = rates
        write_json(args.out, results)
    print(f"{args.scenario}, {args.work}\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
