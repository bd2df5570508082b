"""STR against the peer methods, STR's own settings, and gradient-based sample selection, in the same training
path, over several seeds.

Run: python -m benchmarks.methods [--seeds 0 1 2] [--methods NAME ... | --str-settings] [--scenarios NAME ...]
                                  [--jobs 2] [--out FILE] [--update | --resume]
     python -m benchmarks.methods --table [--out FILE]   (the tables of the committed results)
(NAME: a method or scenario, or a prefix naming only one, e.g. ``--scenarios harmful``; about 2 minutes per run on
2 CPU cores; the peers × 2 scenarios × 3 seeds are about 2.5 hours with --jobs 1; ``--resume`` continues an
interrupted invocation, running only what ``--out`` does not hold yet).
``--str-settings`` runs plain SFT, STR's default and each STR setting that changes one default (README's settings
table: ``--str-settings --scenarios benign --jobs 2 --out benchmarks/results/str_settings.json``).

Every run trains through ``transformers.Trainer`` with ``STRTrainer`` (or the peer's own trainer), as a user's run
does (``logitguard.lab.finetune.finetune``).

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
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.harness import (
    DEFAULT_STR,
    METHODS,
    SCENARIOS,
    Method,
    add_arguments,
    results_only,
    run_all,
    run_dir,
    selection_outcome,
    with_str,
)

STR_SETTINGS: dict[str, Method] = {  # STR's defaults one at a time, against "str (anchors, default)"
    "str, λ=0.1": with_str(replace(DEFAULT_STR, weight=0.1)),
    "str, λ=1": with_str(replace(DEFAULT_STR, weight=1.0)),
    "str, λ=3": with_str(replace(DEFAULT_STR, weight=3.0)),
    "str, λ=10": with_str(replace(DEFAULT_STR, weight=10.0)),
    "str, no rest bucket": with_str(replace(DEFAULT_STR, rest_bucket=False)),
    "str, mse penalty, λ=1": with_str(replace(DEFAULT_STR, penalty="mse", weight=1.0)),
    "str, k=8": with_str(k=8),
    "str, k=64": with_str(k=64),
    "str, 2 anchors a step": with_str(replace(DEFAULT_STR, anchors_per_step=2)),
    "str, 8 anchors every 4th step": with_str(replace(DEFAULT_STR, anchor_every=4)),
    "str, no target bucket": with_str(replace(DEFAULT_STR, target_bucket=False)),
    "str, end-of-turn as a safety token, no target bucket": with_str(
        replace(DEFAULT_STR, target_bucket=False), end_token=True
    ),
    # Anchor coverage: refusals of harmful requests in 1, 2 or 4 of the 8 training phrasings (default: all 8).
    "str, anchors from 1 phrasing": with_str(phrasings=1),
    "str, anchors from 2 phrasings": with_str(phrasings=2),
    "str, anchors from 4 phrasings": with_str(phrasings=4),
}
ROWS = METHODS | STR_SETTINGS  # every row the benchmark can run
COSTS = True  # every run alone in its process: the tables compare step time and memory with SFT's
METRICS = {
    "harmful_refusal": ("harmful refusal", True),
    "harmful_refusal_opening": ("refusal opening only", True),
    "benign_over_refusal": ("over-refusal", True),
    "benign_skills": ("benign skills", True),
    "task_accuracy": ("task accuracy", True),
}
RESULTS = Path(__file__).parent / "results"


def artifacts_key(spec: Method, default_k: int) -> str:
    """The folder name of a row's safety tokens and anchors: its k, whether the end-of-turn token joins them, and
    how many phrasings its anchors come from."""
    key = f"k{spec.k or default_k}" + ("+end" if spec.end_token else "")
    return key + (f"+p{spec.phrasings}" if spec.phrasings else "")


def prepare_artifacts(aligned, setup, config, key: str, folder: Path) -> None:
    """Discover ``key``'s safety tokens and cache its anchors into ``folder`` (the default k's are in ``setup``)."""
    from logitguard.artifacts.references import reference_anchors
    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.lab.demo import make_artifacts

    k = int(key[1:].split("+")[0])
    base = folder.parent / f"k{k}"
    make_artifacts(setup.setting, replace(config, k=k), base, aligned)
    if "+p" in key:  # the same safety tokens; anchors from fewer phrasings
        phrasings = int(key.split("+p")[1])
        tokens = SafetyTokens.load(base / "safety_tokens.json")
        tokens.save(folder / "safety_tokens.json")
        make_artifacts(setup.setting, replace(config, anchor_phrasings=phrasings), folder, aligned)
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


def run_one(method: str, scenario: str, seed: int, steps: int, threads: int, out: str) -> dict:
    """One fine-tuning run in this (fresh) process, through STRTrainer: its metrics, step time and peak RSS."""
    import torch

    from benchmarks.harness import select_examples, toy_harmful_compliance, toy_refusals
    from logitguard.baselines import full_vocabulary_tokens, mix_safety_examples
    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.lab.demo import DemoConfig, DemoSetup
    from logitguard.lab.finetune import finetune, lora_model
    from logitguard.lab.toy.setting import ToySetting

    torch.set_num_threads(threads)
    spec = ROWS[method]
    config = DemoConfig().with_seed(seed)
    tune = spec.finetune_config(replace(config.finetune, steps=steps, monitor_every=0))  # the final metrics only
    artifacts = Path(out) / artifacts_key(spec, config.k)
    setting = ToySetting(config.recipe)
    tokens = SafetyTokens.load(artifacts / "safety_tokens.json")
    setup = DemoSetup(setting, {}, tokens, AnchorCache.load(artifacts / "anchors.safetensors"))
    harmful = toy_harmful_compliance(setting)
    examples = mix_safety_examples(setting.benign_data(), harmful, SCENARIOS[scenario], seed)
    examples = mix_safety_examples(examples, toy_refusals(setting), spec.safety_fraction, seed)
    folder = run_dir(out, method, scenario, seed, steps)
    model = lora_model(setting, tune)
    cost = {}
    if spec.selection is not None:  # scored on the very adapter about to be trained
        cost["epoch_steps"] = len(examples) / tune.batch_size
        start = time.perf_counter()
        scores = folder / "selection" / "scores.jsonl"
        keep = select_examples(model, setup, examples, spec.selection, scores, {})
        cost |= {"selection_s": time.perf_counter() - start, **selection_outcome(examples, keep, harmful, scores)}
        examples = [e for e, k in zip(examples, keep, strict=True) if k]
    if spec.all_tokens:
        tokens = full_vocabulary_tokens(setting.tokenizer)
    result = finetune(
        setting,
        tune,
        examples,
        folder,
        spec.training,
        str_config=spec.str_config,
        tokens=tokens,
        anchors=setup.anchors,
        model=model,
        progress=False,
    )
    return {**result["metrics"], **cost, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    from logitguard.lab.demo import DemoConfig, set_up

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, ROWS, RESULTS / "methods.json", DemoConfig().finetune.steps)
    parser.add_argument("--str-settings", action="store_true", help="SFT, STR's default and each STR setting")
    args = parser.parse_args(argv)
    if results_only(args, ROWS, METRICS, COSTS):
        return
    methods = args.methods or (["sft", "str (anchors, default)", *STR_SETTINGS] if args.str_settings else [*METHODS])
    config = DemoConfig()
    work = Path(tempfile.mkdtemp(prefix="logitguard-methods-"))
    setup = set_up(config, work / f"k{config.k}")  # toy models, aligned metrics, safety tokens and anchors, once
    keys = {artifacts_key(ROWS[m], config.k) for m in methods} - {f"k{config.k}"}  # settings with their own tokens
    aligned = setup.setting.load_aligned() if keys else None
    for key in sorted(keys):
        prepare_artifacts(aligned, setup, config, key, work / key)
    runs = [(m, s, seed) for seed in args.seeds for s in args.scenarios for m in methods]  # seed by seed
    run_all(run_one, runs, args, setup.aligned["metrics"], ROWS, METRICS, extra=(str(work),))
    print(f"\nwrote {args.out}; per-run artifacts (adapters) in {work}")


if __name__ == "__main__":
    main()
