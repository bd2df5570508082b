"""STR against the peer methods in the same training path, on the demo's toy model, over several seeds.

Run: python benchmarks/methods.py [--seeds 0 1 2] [--steps 500] [--out DIR]
(about 2 minutes per run on 2 CPU cores: 8 methods × 2 scenarios × 3 seeds is about 1.5 hours)

Scenarios: the demo's benign fine-tuning set, and the same set with 5% harmful-prompt + compliant-answer
pairs mixed in (harmful fine-tuning, where defences differ most). Each run happens in a fresh process so its
peak memory (RSS) is its own; time per step is the median over the run. Prints one markdown table per scenario
(mean ± std over seeds; time and memory relative to plain SFT of the same scenario and seed) and writes every
row to ``benchmarks/results/methods.json`` (or ``DIR/methods.json``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from logitguard.regularizer import STRConfig

DEFAULT_STR = STRConfig(penalty="kl", weight=0.3, anchors_per_step=8)
KL_BASELINE = STRConfig(penalty="kl", weight=1.0, reference="task", mask_conflicts=False, rest_bucket=False)
METHODS: dict[str, dict] = {
    "sft": {},
    "str (anchors, default)": {"str": DEFAULT_STR},
    "str (task reference)": {"str": replace(DEFAULT_STR, reference="task")},
    "str (anchors + task)": {"str": replace(DEFAULT_STR, reference="both")},
    "full-vocabulary KL (λ=1)": {"str": KL_BASELINE, "all_tokens": True},
    "PACT-style restricted KL (λ=1, T=2)": {"str": replace(KL_BASELINE, temperature=2.0)},
    "constrained SFT (Qi et al.)": {"task_loss": "constrained"},
    "SafeInstr (+3% refusals)": {"safety_fraction": 0.03},
}
SCENARIOS = {"benign": 0.0, "harmful (5% harmful compliance mixed in)": 0.05}
METRICS = ("harmful_refusal", "benign_over_refusal", "benign_skills", "task_accuracy")


def run_one(method: str, scenario: str, seed: int, steps: int, out: str, queue: mp.Queue) -> None:
    """One fine-tuning run in this (fresh) process; puts its metrics, step time and peak RSS on ``queue``."""
    import torch
    from transformers import AutoTokenizer

    from logitguard.anchors import AnchorCache
    from logitguard.baselines import mix_safety_examples
    from logitguard.demo import DemoConfig, DemoSetup, finetune
    from logitguard.discovery import SafetyTokens
    from logitguard.toy.corpus import build_corpus
    from logitguard.toy.model import toy_models

    spec = METHODS[method]
    config = DemoConfig().with_seed(seed)
    config = replace(config, train=replace(config.train, steps=steps, task_loss=spec.get("task_loss", "nll")))
    corpus = build_corpus(config.recipe.seed)
    aligned = toy_models(config.recipe).aligned
    tokenizer = AutoTokenizer.from_pretrained(aligned)
    setup = DemoSetup(
        aligned,
        tokenizer,
        corpus,
        {},
        SafetyTokens.load(Path(out) / "safety_tokens.json"),
        AnchorCache.load(Path(out) / "anchors.safetensors"),
    )
    examples = [(e.prompt, e.response) for e in corpus.instruct]
    harmful = [(e.prompt, e.response) for e in corpus.base if e.kind == "harmful"]
    examples = mix_safety_examples(examples, harmful, SCENARIOS[scenario], seed)
    refusals = [(e.prompt, e.response) for e in corpus.train_harmful]
    examples = mix_safety_examples(examples, refusals, spec.get("safety_fraction", 0.0), seed)
    ids = torch.arange(len(tokenizer)) if spec.get("all_tokens") else None
    run_dir = Path(out) / f"{list(SCENARIOS).index(scenario)}-{list(METHODS).index(method)}-seed{seed}"
    result = finetune("run", config, setup, run_dir, spec.get("str"), examples, ids)
    queue.put({**result["metrics"], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def measure(*args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_one, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def cell(values: list[float], percent: bool = True) -> str:
    mean, std = statistics.mean(values), statistics.pstdev(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}%" if percent else f"{mean:.2f} ± {std:.2f}"


def main(argv: list[str] | None = None) -> None:
    from logitguard.demo import DemoConfig, set_up
    from logitguard.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=DemoConfig().train.steps)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="logitguard-methods-"))
    setup = set_up(DemoConfig(), work)  # toy models, aligned metrics, safety tokens and anchors, once
    rows = []
    for scenario in SCENARIOS:
        for seed in args.seeds:
            for method in args.methods:
                result = measure(method, scenario, seed, args.steps, str(work))
                rows.append({"scenario": scenario, "method": method, "seed": seed, **result})
                print(f"{scenario} | {method} | seed {seed}: {result}", flush=True)

    summary = []
    for scenario in SCENARIOS:
        print(f"\n{scenario}: seeds {args.seeds}, {args.steps} steps, mean ± std")
        print(f"aligned model: {setup.aligned['metrics']}\n")
        print("| method | harmful refusal | over-refusal | benign skills | task accuracy | × SFT time | × SFT memory |")
        print("|---|---|---|---|---|---|---|")
        sft = {r["seed"]: r for r in rows if r["scenario"] == scenario and r["method"] == "sft"}
        for method in args.methods:
            runs = [r for r in rows if r["scenario"] == scenario and r["method"] == method]
            time_ratio = [r["step_time_ms"] / sft[r["seed"]]["step_time_ms"] for r in runs] if sft else []
            memory_ratio = [r["peak_rss_mib"] / sft[r["seed"]]["peak_rss_mib"] for r in runs] if sft else []
            metrics = {key: [r[key] for r in runs] for key in METRICS}
            cells = [cell(metrics[key]) for key in METRICS]
            cells += [cell(time_ratio, False), cell(memory_ratio, False)] if sft else ["—", "—"]
            print(f"| {method} | " + " | ".join(cells) + " |")
            summary.append(
                {
                    "method": method,
                    "settings": {k: (vars(v) if isinstance(v, STRConfig) else v) for k, v in METHODS[method].items()},
                    "scenario": scenario,
                    "seeds": args.seeds,
                    "steps": args.steps,
                    **{
                        key: {"mean": statistics.mean(v), "std": statistics.pstdev(v)}
                        for key, v in [*metrics.items(), ("time_vs_sft", time_ratio), ("memory_vs_sft", memory_ratio)]
                        if v
                    },
                }
            )
    out = args.out or Path(__file__).parent / "results"
    path = write_json(out / "methods.json", {"aligned": setup.aligned["metrics"], "rows": rows, "methods": summary})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
