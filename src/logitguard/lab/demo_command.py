"""``logitguard demo``: plain LoRA SFT erodes an aligned model's refusals, the same run with STR keeps them.

Run: logitguard demo [--out DIR] [--seed S] [--steps N] [--penalty kl|mse] [--weight L] [--k K]
     logitguard demo --model smollm2-135m-safe [--data ../shared/data] [--steps 80]
(on the embedded toy model: about 3 minutes on 2 CPU cores once the toy models are cached, 5-6 the first time;
on smollm2-135m-safe, fine-tuned on GSM8K for 80 steps a run: 68 minutes on 2 CPU cores.)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from logitguard.cli.common import ArgumentParser, number
from logitguard.domains import NON_NEGATIVE


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="logitguard demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new ./logitguard-demo-*)")
    parser.add_argument("--seed", type=number(int, NON_NEGATIVE), default=0, help="seed of the fine-tuning runs")
    parser.add_argument("--steps", type=number(int), default=None, help="fine-tuning steps per run")
    parser.add_argument("--penalty", default=None, help="STR penalty: kl or mse")
    parser.add_argument("--weight", type=number(float, NON_NEGATIVE), default=None, help="STR weight lambda")
    parser.add_argument("--k", type=number(int), default=None, help="number of safety tokens")
    parser.add_argument("--model", default=None, help="a real aligned chat model, e.g. smollm2-135m-safe (GSM8K)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="public data folder (with --model)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from logitguard.lab.demo import GSM8K_COLUMNS, TOY_COLUMNS, DemoConfig, results_table, run_demo, run_real_demo
    from logitguard.outputs import OutputLock, claim_folder, mark_folder

    out = args.out or Path(time.strftime("logitguard-demo-%Y%m%d-%H%M%S"))
    config = DemoConfig().with_seed(args.seed)
    str_overrides = {key: v for key, v in {"penalty": args.penalty, "weight": args.weight}.items() if v is not None}
    config = replace(
        config,
        k=config.k if args.k is None else args.k,
        finetune=config.finetune if args.steps is None else replace(config.finetune, steps=args.steps),
        str_config=replace(config.str_config, **str_overrides),
    )
    claim_folder(out, "demo")  # a demo rerun replaces its own files only
    with OutputLock(out):
        mark_folder(out, "demo")
        if args.model:
            summary, columns = run_real_demo(args.model, args.data, out, args.steps, args.seed), GSM8K_COLUMNS
        else:
            summary, columns = run_demo(config, out), TOY_COLUMNS
    print(results_table(summary["models"], columns))
    print(f"\nwrote {out}/results.json, report.md and refusal_curve.png in {summary['seconds']:.0f} s")
    return 0
