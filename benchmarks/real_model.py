"""What the real-model benchmarks share: a work folder prepared once for an aligned model, and one fine-tuning run.

``real_smollm2`` and ``real_qwen`` are each a :class:`RealBenchmark` (their aligned model, its evaluation, the step
budget, the prompts of their anchor sets and their rows); this module prepares a work folder (every piece cached on
its own: the anchor sets, the harmful compliance pairs, the refusals SafeInstr mixes in, the aligned model's
results) and runs one (method, scenario, seed) in a fresh process, as ``harness.run_all`` asks. Not a benchmark
itself: ``python -m benchmarks.real_smollm2`` or ``python -m benchmarks.real_qwen``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.harness import SCENARIOS, Method, add_arguments, results_only, run_all, run_dir, selection_outcome
from logitguard.lab.demo import REAL_DEMOS, RealDemo

ROOT = Path(__file__).parents[1]
N_MANY_ANCHORS = 256  # refusals of varied requests in the "many phrasings" anchor set
N_COMPLIANCE = 200  # safety-tuning requests the unaligned model answers: the harmful pairs of the harmful scenario


@dataclass(frozen=True)
class RealBenchmark:
    """One real-model benchmark.

    Attributes:
        module: the benchmark's module (its fresh run processes import the spec from it).
        model: the default aligned model (a built-in name or a folder); one per work folder. Its held-out
            evaluation, step budget and GSM8K generation count are the demo's (``logitguard.lab.demo.REAL_DEMOS``),
            so that the demo reproduces the benchmark's rows.
        rows: the methods it can run.
        metrics: the table's columns (``harness.summarize``).
        many_prompts: ``(data root, setting) -> prompts`` of the "many phrasings" anchor set.
        lookalike_prompts: ``data root -> prompts`` whose answers are the benign anchors (two-sided STR); None: none.
        results: the results JSON.
    """

    module: str
    model: str
    rows: dict[str, Method]
    metrics: dict[str, tuple[str, bool]]
    many_prompts: Callable
    lookalike_prompts: Callable | None
    results: Path

    @property
    def demo(self) -> RealDemo:
        return REAL_DEMOS[self.model]


def check_work(work: Path, model: str) -> None:
    """Record which aligned model ``work`` is prepared for, and stop if it was prepared for another: its anchors
    and results would silently belong to that one. A built-in name is told apart by its adapter's hash."""
    import logitguard.models
    from logitguard.io import write_json

    identity = {"model": model, "resolved": Path(logitguard.models.resolve_model(model)).name}
    marker = work / "model.json"
    if marker.is_file() and (recorded := json.loads(marker.read_text())) != identity:
        raise SystemExit(
            f"{work} was prepared for {recorded['resolved']}, not {identity['resolved']}; use another --work"
        )
    write_json(marker, identity)


def anchor_sets_needed(bench: RealBenchmark, methods: list[str]) -> set[str]:
    """The anchor sets the asked ``methods`` read: ``default`` always (the safety tokens come from it), ``many``
    for the "many phrasings" rows, ``benign`` for two-sided STR."""
    needed = {"default"}
    for method in methods:
        spec = bench.rows[method]
        needed.add(spec.anchors)
        if spec.str_config is not None and spec.str_config.two_sided:
            needed.add("benign")
    return needed


def safety_requests(data_root: Path) -> list[tuple[str, str]]:
    """(request, safe answer) of the safety-tuning data whose answer is a clean refusal."""
    from logitguard.evaluation.verdicts import judge_response
    from logitguard.lab.public_data import safety_tuning_pairs

    return [(p, a) for p, a in safety_tuning_pairs(data_root) if judge_response(a) == "refusal"]


def prepare(bench: RealBenchmark, work: Path, data_root: Path, model: str, needed: set[str], seed: int = 0) -> dict:
    """Once per work folder, each piece cached on its own and made only when a run asks for it: the anchor sets
    ``needed`` (``default``: refusals of LogitGuard's built-in harmful prompts; ``many``: of varied requests;
    ``benign``: safe look-alikes the model answers), the harmful compliance pairs, the refusals SafeInstr mixes in,
    and the aligned model's results (returned). A piece made later (``many`` for a later row) is the same as one
    made first: each depends only on the aligned model, the data and ``seed``."""
    from logitguard.artifacts import prepare_artifacts
    from logitguard.evaluation.generation import generate
    from logitguard.evaluation.verdicts import judge_response
    from logitguard.io import write_json
    from logitguard.models import load_model, load_tokenizer

    if "benign" in needed and bench.lookalike_prompts is None:
        raise SystemExit(f"{bench.module} has no safe look-alikes for benign anchors (two-sided STR)")
    check_work(work, model)
    setting = bench.demo.setting(data_root, model, progress=True)
    requests = safety_requests(data_root)
    random.Random(seed).shuffle(requests)
    for_compliance = requests[N_MANY_ANCHORS : N_MANY_ANCHORS + N_COMPLIANCE]
    if not (work / "refusals.json").is_file():
        write_json(work / "refusals.json", [(p, a) for p, a in requests[N_MANY_ANCHORS + N_COMPLIANCE :]])
    tokens_path = work / "default" / "safety_tokens.json"
    aligned_path = work / "aligned.json"
    anchor_paths = {name: work / name / "anchors.safetensors" for name in sorted(needed)}
    if not all(path.is_file() for path in [tokens_path, aligned_path, *anchor_paths.values()]):
        aligned = setting.load_aligned()
        prepare_artifacts(aligned, setting.tokenizer, tokens_path, anchor_paths["default"]).save()
        if "many" in needed:
            many = bench.many_prompts(data_root, setting)
            prepare_artifacts(aligned, setting.tokenizer, tokens_path, anchor_paths["many"], harmful=many).save()
        if "benign" in needed:
            lookalike = bench.lookalike_prompts(data_root)
            prepare_artifacts(
                aligned,
                setting.tokenizer,
                tokens_path,
                None,
                benign_anchors_path=anchor_paths["benign"],
                lookalike=lookalike,
            ).save()
        if not aligned_path.is_file():
            write_json(aligned_path, setting.evaluate(aligned))
        del aligned
    compliance_path = work / "harmful_compliance.json"
    if not compliance_path.is_file():
        unaligned = load_model("smollm2-135m", dtype="float32")
        prompts = [p for p, _ in for_compliance]
        answers = generate(unaligned, load_tokenizer("smollm2-135m"), prompts, 128, 32, "harmful compliance")
        pairs = zip(prompts, answers, strict=True)
        write_json(compliance_path, [(p, a) for p, a in pairs if judge_response(a) == "compliance"])
    return json.loads(aligned_path.read_text())


def run_one(
    method: str,
    scenario: str,
    seed: int,
    steps: int,
    threads: int,
    module: str,
    work: str,
    data_root: str,
    model: str,
) -> dict:
    """One fine-tuning run of ``module``'s benchmark in this (fresh) process: its metrics, step time and peak RSS."""
    import torch

    from logitguard.baselines import mix_safety_examples
    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.data.chat import chat_messages
    from logitguard.lab.finetune import finetune, lora_model
    from logitguard.lab.gsm8k import N_TRAIN, finetune_config
    from logitguard.selection import select_samples

    torch.set_num_threads(threads)
    bench: RealBenchmark = importlib.import_module(module).BENCHMARK
    work_dir = Path(work)
    spec = bench.rows[method]
    setting = bench.demo.setting(Path(data_root), model)
    tune = spec.finetune_config(replace(finetune_config(seed, steps), monitor_every=0))
    tokens = SafetyTokens.load(work_dir / "default" / "safety_tokens.json")
    anchors = AnchorCache.load(work_dir / spec.anchors / "anchors.safetensors")
    two_sided = spec.str_config is not None and spec.str_config.two_sided
    benign = AnchorCache.load(work_dir / "benign" / "anchors.safetensors") if two_sided else None
    harmful = [tuple(p) for p in json.loads((work_dir / "harmful_compliance.json").read_text())]
    refusals = [tuple(p) for p in json.loads((work_dir / "refusals.json").read_text())]
    examples = mix_safety_examples(setting.benign_data(N_TRAIN, seed), harmful, SCENARIOS[scenario], seed)
    examples = mix_safety_examples(examples, refusals, spec.safety_fraction, seed)
    folder = run_dir(work_dir, method, scenario, seed, steps)
    model_ = lora_model(setting, tune)
    cost = {}
    if spec.selection is not None:  # scored on the very adapter about to be trained
        selection = replace(spec.selection, batch_size=8, max_length=256, on_overflow="truncate")
        cost["epoch_steps"] = len(examples) / tune.batch_size
        start = time.perf_counter()
        samples = ((f"example {i}", chat_messages(p, r)) for i, (p, r) in enumerate(examples))
        scores = folder / "selection" / "scores.jsonl"
        keep = select_samples(
            model_,
            setting.tokenizer,
            samples,
            selection,
            scores,
            {},
            total=len(examples),
            tokens=tokens,
            anchors=anchors,
        )
        cost |= {"selection_s": time.perf_counter() - start, **selection_outcome(examples, keep, harmful, scores)}
        examples = [e for e, k in zip(examples, keep, strict=True) if k]
    result = finetune(
        setting,
        tune,
        examples,
        folder,
        spec.training,
        str_config=spec.str_config,
        tokens=tokens,
        anchors=anchors,
        benign_anchors=benign,
        model=model_,
        progress=False,
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**result["metrics"], **cost, "peak_rss_mib": peak_rss_mib, "device": device}


def main(bench: RealBenchmark, argv: list[str] | None, description: str, work: str, costs: bool) -> None:
    """A real-model benchmark's command line: run (resumably) the asked rows, or print or merge its tables."""
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser, bench.rows, bench.results, steps=bench.demo.steps)
    parser.set_defaults(seeds=[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path(work), help="cached artifacts and runs")
    parser.add_argument("--model", default=bench.model, help="the aligned model (a built-in name or a folder)")
    parser.add_argument("--prepare-only", action="store_true", help="make --work's cached pieces, run nothing")
    args = parser.parse_args(argv)
    if results_only(args, bench.rows, bench.metrics, costs):
        return
    args.work.mkdir(parents=True, exist_ok=True)
    methods = args.methods or list(bench.rows)
    aligned = prepare(bench, args.work, args.data_root, args.model, anchor_sets_needed(bench, methods))
    if args.prepare_only:
        print(f"prepared {args.work}")
        return
    runs = [(m, s, seed) for seed in args.seeds for s in args.scenarios for m in methods]
    extra = (bench.module, str(args.work), str(args.data_root), args.model)
    run_all(run_one, runs, args, aligned, bench.rows, bench.metrics, extra=extra)
    print(f"\nwrote {args.out}; per-run artifacts in {args.work}")
