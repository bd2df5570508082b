"""Does STR keep refusals to their end? STR with and without the target bucket, through ``STRTrainer``.

Run: python -m benchmarks.refusal_continuation [--seeds 0 1 2] [--steps 500]
     python -m benchmarks.refusal_continuation --table
(about a minute per run on 2 CPU cores; rows go to ``benchmarks/results/refusal_continuation.json`` after each.)

The failure this measures: a fine-tuned model opens with the aligned model's refusal and then goes on to comply
("I'm sorry, but I can't assist with that Step 1: ..."), which a prefix-only metric counts as a refusal. The
demo's toy setting (500 LoRA steps, lr 3e-3, batch 16, benign data) is trained through ``STRTrainer`` (the committed
rows were measured in the plain loop of ``str_loss`` before 0.2, whose data order and dropout draws differ), with
STR as it was (safety tokens and rest bucket), with the end-of-turn token added to the safety tokens, and with the
target bucket (the default).
Held-out harmful answers are 48 tokens long; the table gives clean refusals, refusal openings and the task.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.harness import show_table

VARIANTS = {
    "no target bucket": {"target_bucket": False},
    "end-of-turn as a safety token, no target bucket": {"target_bucket": False, "end_token": True},
    "target bucket (default)": {},
}
RESULTS = Path(__file__).parent / "results" / "refusal_continuation.json"


def run(variant: str, seed: int, steps: int, work: Path) -> dict:
    """One STR fine-tuning run of the toy through ``STRTrainer`` (``lab.finetune``), as ``methods`` does."""
    from logitguard.artifacts.references import reference_anchors
    from logitguard.core.config import STRConfig
    from logitguard.lab.demo import DemoConfig, make_artifacts
    from logitguard.lab.finetune import finetune, lora_model
    from logitguard.lab.toy.setting import ToySetting

    spec = dict(VARIANTS[variant])
    end_token = spec.pop("end_token", False)
    config = DemoConfig().with_seed(seed)
    setting = ToySetting(config.recipe)
    aligned = setting.load_aligned()
    tokens, anchors = make_artifacts(setting, config, work / "artifacts", aligned)
    if end_token:
        tokenizer = setting.tokenizer
        tokens = replace(
            tokens,
            ids=[*tokens.ids, tokenizer.eos_token_id],
            tokens=[*tokens.tokens, tokenizer.eos_token],
            scores=[*tokens.scores, 0.0],
        )
        anchors = reference_anchors(aligned, anchors.input_ids, anchors.attention_mask, anchors.target_mask, tokens)
    tune = replace(config.finetune, steps=steps, monitor_every=0)
    model = lora_model(setting, tune)
    folder = work / f"{variant.replace(' ', '-')}-seed{seed}"
    result = finetune(
        setting,
        tune,
        setting.benign_data(),
        folder,
        "str",
        str_config=STRConfig(**spec),
        tokens=tokens,
        anchors=anchors,
        model=model,
        progress=False,
    )
    return {key: result["metrics"][key] for key in ("harmful_refusal", "harmful_refusal_opening", "task_accuracy")}


def table(results: dict) -> str:
    lines = [
        "| STR | seeds | harmful refusal | refusal opening only | task accuracy |",
        "|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rows = [r for r in results["rows"] if r["variant"] == variant]
        if rows:
            cells = []
            for key in ("harmful_refusal", "harmful_refusal_opening", "task_accuracy"):
                values = [r[key] for r in rows]
                cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * statistics.pstdev(values):.1f}%")
            seeds = ", ".join(str(r["seed"]) for r in rows)
            lines.append(f"| {variant} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        return show_table(args.out, table)
    from logitguard.io import write_json

    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {"rows": []}
    work = Path(tempfile.mkdtemp(prefix="logitguard-continuation-"))
    for seed in args.seeds:
        for variant in args.variants:
            row = {"variant": variant, "seed": seed, "steps": args.steps, **run(variant, seed, args.steps, work)}
            results["rows"] = [r for r in results["rows"] if (r["variant"], r["seed"]) != (variant, seed)] + [row]
            write_json(args.out, results)
            print(row, flush=True)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
