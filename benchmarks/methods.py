"""STR against the peer methods, STR's own settings, and gradient-based sample selection, in the same training
path, over several seeds.

Run: python benchmarks/methods.py [--seeds 0 1 2] [--methods NAME ... | --str-settings] [--scenarios NAME ...]
                                  [--jobs 2] [--out FILE] [--update]
     python benchmarks/methods.py --table benchmarks/results/methods.json   (the tables of an earlier run)
(about 2 minutes per run on 2 CPU cores; the peers × 2 scenarios × 3 seeds are about 2.5 hours with --jobs 1;
``--resume`` continues an interrupted invocation, running only what ``--out`` does not hold yet).
``--str-settings`` runs plain SFT, STR's default and each STR setting that changes one default (README's settings
table: ``--str-settings --scenarios benign --jobs 2 --out benchmarks/results/str_settings.json``).

Every run trains through ``transformers.Trainer`` with ``STRTrainer`` (or the peer's own trainer), as a user's run
does (``logitguard.experiment.finetune``).

Scenarios: the demo's benign fine-tuning set, and the same set with 5% harmful-prompt + compliant-answer pairs
mixed in (harmful fine-tuning, where defences differ most). Each run happens in a fresh process so its peak memory
(RSS) is its own; time per step is the median over the run. ``--jobs N`` runs N at once with ``cpu_count // N``
threads each (times stay comparable within one invocation, but not with a ``--jobs 1`` run). Selection methods
score the samples on the very LoRA adapter about to be trained, then train on the kept ones; their cost is given
relative to one epoch of plain SFT steps (same scenario and seed). Settings with another k discover their own k
safety tokens and cache their own anchors. Prints one markdown table per scenario (mean ± std over seeds; time and
memory relative to plain SFT of the same scenario and seed) and writes every row to FILE (default
``benchmarks/results/methods.json``; ``--update`` merges into it, replacing the rows rerun) after each run, so an
interrupted benchmark keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

from logitguard.regularizer import STRConfig
from logitguard.selection import SelectionConfig

DEFAULT_STR = STRConfig()
KL_BASELINE = STRConfig(penalty="kl", weight=1.0, reference="task", mask_conflicts=False, rest_bucket=False)
DROP_BY_NORM = SelectionConfig(0.1, "gradient-norm", batch_size=16)
DROP_BY_SAFETY = SelectionConfig(0.1, "safety", batch_size=16)
METHODS: dict[str, dict] = {
    "sft": {},
    "str (anchors, default)": {"str": DEFAULT_STR},
    "str (task reference)": {"str": replace(DEFAULT_STR, reference="task")},
    "str (anchors + task)": {"str": replace(DEFAULT_STR, reference="both")},
    "full-vocabulary KL (λ=1)": {"str": KL_BASELINE, "all_tokens": True},
    "PACT-style restricted KL (λ=1, T=2)": {"str": replace(KL_BASELINE, temperature=2.0)},
    "constrained SFT (Qi et al.)": {"constrained": True},
    "SafeInstr (+3% refusals)": {"safety_fraction": 0.03},
    "selection (drop 10%, gradient norm)": {"selection": DROP_BY_NORM},
    "selection (drop 10%, safety score)": {"selection": DROP_BY_SAFETY},
    "selection (gradient norm) + str": {"selection": DROP_BY_NORM, "str": DEFAULT_STR},
    "selection (safety score) + str": {"selection": DROP_BY_SAFETY, "str": DEFAULT_STR},
}
STR_SETTINGS: dict[str, dict] = {  # STR's defaults one at a time, against "str (anchors, default)"
    "str, λ=0.1": {"str": replace(DEFAULT_STR, weight=0.1)},
    "str, λ=1": {"str": replace(DEFAULT_STR, weight=1.0)},
    "str, λ=3": {"str": replace(DEFAULT_STR, weight=3.0)},
    "str, λ=10": {"str": replace(DEFAULT_STR, weight=10.0)},
    "str, no rest bucket": {"str": replace(DEFAULT_STR, rest_bucket=False)},
    "str, mse penalty, λ=1": {"str": replace(DEFAULT_STR, penalty="mse", weight=1.0)},
    "str, k=8": {"str": DEFAULT_STR, "k": 8},
    "str, k=64": {"str": DEFAULT_STR, "k": 64},
    "str, 2 anchors a step": {"str": replace(DEFAULT_STR, anchors_per_step=2)},
    "str, 8 anchors every 4th step": {"str": replace(DEFAULT_STR, anchor_every=4)},
    "str, no target bucket": {"str": replace(DEFAULT_STR, target_bucket=False)},
    "str, end-of-turn as a safety token, no target bucket": {
        "str": replace(DEFAULT_STR, target_bucket=False),
        "end_token": True,
    },
}
ROWS = METHODS | STR_SETTINGS  # every row the benchmark can run
SCENARIOS = {"benign": 0.0, "harmful (5% harmful compliance mixed in)": 0.05}
METRICS = ("harmful_refusal", "harmful_refusal_opening", "benign_over_refusal", "benign_skills", "task_accuracy")
SELECTION_METRICS = ("dropped_harmful",)


def artifacts_key(spec: dict, default_k: int) -> str:
    """The folder name of a row's safety tokens and anchors: its k, and whether the end-of-turn token joins them."""
    return f"k{spec.get('k', default_k)}" + ("+end" if spec.get("end_token") else "")


def prepare_artifacts(aligned, setup, config, key: str, folder: Path) -> None:
    """Discover ``key``'s safety tokens and cache its anchors into ``folder`` (the default k's are in ``setup``)."""
    from logitguard.anchors import AnchorCache, reference_anchors
    from logitguard.demo import make_artifacts
    from logitguard.discovery import SafetyTokens

    k = int(key[1:].removesuffix("+end"))
    base = folder.parent / f"k{k}"
    make_artifacts(setup.setting, replace(config, k=k), base, aligned)
    if key.endswith("+end"):  # the same refusals, the end-of-turn token added to the discovered ones
        tokens, tokenizer = SafetyTokens.load(base / "safety_tokens.json"), setup.setting.tokenizer
        cache = AnchorCache.load(base / "anchors.safetensors")
        tokens = replace(
            tokens,
            ids=[*tokens.ids, tokenizer.eos_token_id],
            tokens=[*tokens.tokens, tokenizer.eos_token],
            scores=[*tokens.scores, 0.0],
        )
        tokens.save(folder / "safety_tokens.json")
        reference_anchors(aligned, cache.input_ids, cache.attention_mask, cache.target_mask, tokens).save(
            folder / "anchors.safetensors"
        )


def run_dir(out: str | Path, method: str, scenario: str, seed: int) -> Path:
    """Where ``run_one`` keeps a run's files; the trained adapter is in ``run_dir(...) / "adapter"``."""
    return Path(out) / f"{list(SCENARIOS).index(scenario)}-{list(ROWS).index(method)}-seed{seed}"


def select(model, examples: list, harmful: list, selection: SelectionConfig, setup, folder: Path) -> tuple:
    """Score ``examples`` on ``model`` (the fresh adapter about to be trained); the kept ones and the cost."""
    from logitguard.demo import select_examples

    start = time.perf_counter()
    keep = select_examples(model, setup, examples, selection, folder / "selection" / "scores.jsonl", {})
    seconds = time.perf_counter() - start
    harmful = set(harmful)
    mixed_in = [k for e, k in zip(examples, keep, strict=True) if e in harmful]
    dropped = {"dropped_harmful": sum(not k for k in mixed_in) / len(mixed_in)} if mixed_in else {}
    return [e for e, k in zip(examples, keep, strict=True) if k], {"selection_s": seconds, **dropped}


def run_one(method: str, scenario: str, seed: int, steps: int, out: str, threads: int) -> dict:
    """One fine-tuning run in this (fresh) process, through STRTrainer: its metrics, step time and peak RSS."""
    import torch

    from logitguard.anchors import AnchorCache
    from logitguard.baselines import full_vocabulary_tokens, mix_safety_examples
    from logitguard.demo import DemoConfig, DemoSetup
    from logitguard.discovery import SafetyTokens
    from logitguard.experiment import finetune, lora_model
    from logitguard.toy.setting import ToySetting

    torch.set_num_threads(threads)
    spec = ROWS[method]
    config = DemoConfig().with_seed(seed)
    tune = replace(config.finetune, steps=steps, monitor_every=0)  # the final metrics only
    artifacts = Path(out) / artifacts_key(spec, config.k)
    setting = ToySetting(config.recipe)
    tokens = SafetyTokens.load(artifacts / "safety_tokens.json")
    setup = DemoSetup(setting, {}, tokens, AnchorCache.load(artifacts / "anchors.safetensors"))
    harmful = setting.harmful_compliance()
    examples = mix_safety_examples(setting.benign_data(), harmful, SCENARIOS[scenario], seed)
    examples = mix_safety_examples(examples, setting.refusals(), spec.get("safety_fraction", 0.0), seed)
    folder = run_dir(out, method, scenario, seed)
    model = lora_model(setting, tune)
    cost = {}
    if "selection" in spec:
        cost["epoch_steps"] = len(examples) / tune.batch_size
        examples, selected = select(model, examples, harmful, spec["selection"], setup, folder)
        cost |= selected
    if spec.get("all_tokens"):
        tokens = full_vocabulary_tokens(setting.tokenizer)
    result = finetune(
        setting,
        tune,
        examples,
        folder,
        spec.get("str"),
        tokens,
        setup.anchors,
        constrained=spec.get("constrained", False),
        model=model,
        progress=False,
    )
    return {**result["metrics"], **cost, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cell(values: list[float], percent: bool = True) -> str:
    if not values:
        return "—"
    mean, std = statistics.mean(values), statistics.pstdev(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}%" if percent else f"{mean:.2f} ± {std:.2f}"


def summarize(rows: list[dict], steps: int) -> tuple[list[dict], list[str]]:
    """Per method and scenario: the JSON summary objects and the markdown table lines."""
    summary, lines = [], []
    for scenario in SCENARIOS:
        scenario_rows = [r for r in rows if r["scenario"] == scenario]
        if not scenario_rows:
            continue
        seeds = sorted({r["seed"] for r in scenario_rows})
        lines += [f"\n{scenario}: seeds {seeds}, {steps} steps, mean ± std\n"]
        header = ["method", "seeds", "harmful refusal", "refusal opening only", "over-refusal", "benign skills"]
        header += ["task accuracy", "× SFT time", "× SFT memory"]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        sft = {r["seed"]: r for r in scenario_rows if r["method"] == "sft"}
        for method in ROWS:
            runs = [r for r in scenario_rows if r["method"] == method]
            if not runs:
                continue
            paired = [r for r in runs if r["seed"] in sft]
            values = {key: [r[key] for r in runs if key in r] for key in (*METRICS, *SELECTION_METRICS)}
            values["time_vs_sft"] = [r["step_time_ms"] / sft[r["seed"]]["step_time_ms"] for r in paired]
            values["memory_vs_sft"] = [r["peak_rss_mib"] / sft[r["seed"]]["peak_rss_mib"] for r in paired]
            values["selection_vs_epoch"] = [  # scoring time over one epoch of plain SFT steps, same seed
                r["selection_s"] / (sft[r["seed"]]["step_time_ms"] / 1000 * r["epoch_steps"])
                for r in paired
                if "selection_s" in r
            ]
            cells = [cell(values[key]) for key in METRICS]
            cells += [cell(values["time_vs_sft"], False), cell(values["memory_vs_sft"], False)]
            method_seeds = ", ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            lines += [f"| {method} | {method_seeds} | " + " | ".join(cells) + " |"]
            summary.append(
                {
                    "method": method,
                    "settings": {k: asdict(v) if is_dataclass(v) else v for k, v in ROWS[method].items()},
                    "scenario": scenario,
                    "seeds": sorted(r["seed"] for r in runs),
                    "steps": steps,
                    **{
                        key: {"mean": statistics.mean(v), "std": statistics.pstdev(v)} for key, v in values.items() if v
                    },
                }
            )
        costs = [s for s in summary if s["scenario"] == scenario and "selection_vs_epoch" in s]
        for s in costs:
            dropped = s.get("dropped_harmful")
            share = f"; dropped {100 * dropped['mean']:.0f}% of the mixed-in harmful pairs" if dropped else ""
            lines += [f"{s['method']}: selection took {s['selection_vs_epoch']['mean']:.2f}× one SFT epoch{share}"]
    return summary, lines


def main(argv: list[str] | None = None) -> None:
    from logitguard.demo import DemoConfig, set_up
    from logitguard.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=DemoConfig().finetune.steps)
    rows_to_run = parser.add_mutually_exclusive_group()
    rows_to_run.add_argument("--methods", nargs="+", choices=list(ROWS), help="default: the peers and selection")
    rows_to_run.add_argument("--str-settings", action="store_true", help="SFT, STR's default and each STR setting")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with cpu_count // jobs threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "methods.json")
    parser.add_argument("--update", action="store_true", help="merge into the rows already in --out")
    parser.add_argument(
        "--resume", action="store_true", help="merge into --out and run only the runs it does not hold yet"
    )
    parser.add_argument("--table", type=Path, default=None, help="only print the tables of an earlier methods.json")
    args = parser.parse_args(argv)
    if args.table:
        data = json.loads(args.table.read_text())
        print(f"aligned model: {data['aligned']}")
        print("\n".join(summarize(data["rows"], data["methods"][0]["steps"])[1]))
        return
    methods = args.methods or (["sft", "str (anchors, default)", *STR_SETTINGS] if args.str_settings else [*METHODS])
    path, config = args.out, DemoConfig()
    work = Path(tempfile.mkdtemp(prefix="logitguard-methods-"))
    setup = set_up(config, work / f"k{config.k}")  # toy models, aligned metrics, safety tokens and anchors, once
    keys = {artifacts_key(ROWS[m], config.k) for m in methods} - {f"k{config.k}"}  # settings with their own tokens
    aligned = setup.setting.load_aligned() if keys else None
    for key in sorted(keys):
        prepare_artifacts(aligned, setup, config, key, work / key)
    runs = [(m, s, seed) for seed in args.seeds for s in args.scenarios for m in methods]  # seed by seed
    earlier = json.loads(path.read_text())["rows"] if (args.update or args.resume) and path.is_file() else []
    if args.resume:
        done = {(r["method"], r["scenario"], r["seed"]) for r in earlier}
        asked, runs = len(runs), [run for run in runs if run not in done]
        print(f"{asked} runs asked for, {len(runs)} still to run", flush=True)
    rows = [r for r in earlier if (r["method"], r["scenario"], r["seed"]) not in set(runs)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {
            pool.submit(run_one, m, s, seed, args.steps, str(work), threads): (m, s, seed) for m, s, seed in runs
        }
        for future in as_completed(futures):
            method, scenario, seed = futures[future]
            rows.append({"scenario": scenario, "method": method, "seed": seed, "jobs": args.jobs, **future.result()})
            print(f"{scenario} | {method} | seed {seed}: {rows[-1]}", flush=True)
            summary, _ = summarize(rows, args.steps)
            write_json(path, {"aligned": setup.aligned["metrics"], "rows": rows, "methods": summary})
    print(f"\naligned model: {setup.aligned['metrics']}")
    print("\n".join(summarize(rows, args.steps)[1]))
    print(f"\nwrote {path}; per-run artifacts (adapters) in {work}")


if __name__ == "__main__":
    main()
