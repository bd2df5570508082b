"""Wall time per optimizer step and peak memory of STR, its options and its peers next to plain LoRA SFT.

Run: python -m benchmarks.str_overhead [--preset toy|tiny-32k|tiny-128k] [--repeats 3] [--variants NAME ...]
     python -m benchmarks.str_overhead --preset qwen2.5-coder-0.5b --work real-qwen-work [--frontier]
GPU: python -m benchmarks.str_overhead --device cuda --dtype bfloat16 --preset llama-1b
     python -m benchmarks.str_overhead --table
(On 2 CPU cores: the toy about 10 minutes for every variant and 3 repeats, tiny-32k about 40, tiny-128k about 40 for
its main variants, Qwen about 7 minutes a variant and repeat.) Each invocation's results are merged into
``benchmarks/results/str_overhead.json`` under its preset, device and dtype, after every measurement.

The model is trained with LoRA (r=16, every linear layer) through the real ``Trainer.training_step`` (forward,
loss, backward) plus the optimizer step, for plain SFT and each variant. The ``toy`` preset is the demo's toy
aligned model on its real benign data (batch 16, a fresh draw each step, the same draws for every variant) with
its real safety tokens and anchors; ``qwen2.5-coder-0.5b`` is the real-model benchmark's own step (Qwen2.5-Coder-0.5B-
Instruct, LoRA r=16 with dropout 0.05, batches of 8 of its 320 short GSM8K rows, the anchors ``real_qwen`` made
in ``--work``: ``python -m benchmarks.real_qwen --prepare-only --methods "str (anchors, default)"``), where each
variant runs in a process of its own beside SFT (two copies of the model fit in memory, not a dozen); the others
are random-weight Llamas of a realistic shape on full rows of
``--seq`` tokens with synthetic anchors (``--anchors-per-step`` of ``--anchor-length`` tokens, the second half of
each a refusal). Every (variant, repeat) runs in a fresh process, variants interleaved within each repeat, so the
ratios are measured side by side. A repeat's time is the mean over its steps (``--steps`` a multiple of 4, so a
variant that runs anchors every 4th step pays for them); the table gives the median over repeats. Peak memory is
``torch.cuda.max_memory_allocated`` on GPU and the process's peak RSS on CPU.

Variants: STR's default (packed anchor pass), the other anchor passes, its options one at a time (anchor_every,
anchors_per_step, the rest and target buckets), and the peers: PACT-style restricted KL (the k safety tokens of
the task batch against the adapters-off model, T=2) and full-vocabulary KL (every token), both of which run a
reference forward pass per step.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

PRESETS = {
    "toy": {"vocab": 4096, "hidden": 128, "layers": 4, "heads": 4, "intermediate": 384},  # the demo's toy model
    "tiny-32k": {"vocab": 32000, "hidden": 256, "layers": 4, "heads": 4, "intermediate": 1024},
    "tiny-128k": {"vocab": 128256, "hidden": 256, "layers": 4, "heads": 4, "intermediate": 1024},
    "llama-1b": {"vocab": 128256, "hidden": 2048, "layers": 16, "heads": 32, "intermediate": 8192},
    "llama-8b": {"vocab": 128256, "hidden": 4096, "layers": 32, "heads": 32, "intermediate": 14336},
    "qwen2.5-coder-0.5b": {"model": "qwen2.5-coder-0.5b"},  # the real model: the benchmark's rows and anchors
}
REAL = {name for name, preset in PRESETS.items() if "model" in preset}
PAPER_STR = {"reference": "task", "penalty": "mse", "weight": 1.0, "mask_conflicts": False, "rest_bucket": False}
PAPER_STR |= {"target_bucket": False}  # STR as its paper is read: the frozen model's logits on the task batch, MSE
PACT = {"reference": "task", "weight": 1.0, "temperature": 2.0, "mask_conflicts": False}
PACT |= {"rest_bucket": False, "target_bucket": False}
VARIANTS: dict[str, dict | None] = {  # STRConfig overrides (None: plain SFT; "all_tokens": every token is pinned)
    "sft": None,
    "str (default: packed pass)": {},
    "str, separate anchor pass": {"anchor_pass": "separate"},
    "str, anchors every 2nd step": {"anchor_every": 2},
    "str, anchors every 4th step": {"anchor_every": 4},
    "str, 2 anchors a step": {"anchors_per_step": 2},
    "str, 4 anchors a step": {"anchors_per_step": 4},
    "str, 16 anchors a step": {"anchors_per_step": 16},
    "str, no rest bucket": {"rest_bucket": False},
    "str, no target bucket": {"target_bucket": False},
    "str, no bucket": {"rest_bucket": False, "target_bucket": False},
    "str, first 4 tokens of each refusal": {"anchor_tokens": 4},
    "str, first 16 tokens of each refusal": {"anchor_tokens": 16},
    "str, 4 anchors a step, first 16 tokens": {"anchors_per_step": 4, "anchor_tokens": 16},
    "str, task reference": {"reference": "task"},
    "STR as its paper is described (task reference, logit MSE)": PAPER_STR,
    "PACT-style restricted KL (T=2)": PACT,
    "full-vocabulary KL": {**PACT, "temperature": 1.0, "all_tokens": True},
}
MAIN = ["sft", "str (default: packed pass)", "str, separate anchor pass", "PACT-style restricted KL (T=2)"]
FRONTIER = [  # the cost side of the real-model frontier (benchmarks/docs/cost.md)
    "sft",
    "str (default: packed pass)",
    "str, 2 anchors a step",
    "str, 4 anchors a step",
    "str, anchors every 2nd step",
    "str, anchors every 4th step",
    "str, first 4 tokens of each refusal",
    "str, first 16 tokens of each refusal",
    "str, 4 anchors a step, first 16 tokens",
    "STR as its paper is described (task reference, logit MSE)",
    "PACT-style restricted KL (T=2)",
]


@dataclass
class Settings:
    preset: str
    seq: int
    batch: int
    steps: int
    warmup: int
    anchors_per_step: int
    anchor_length: int
    k: int
    device: str
    dtype: str
    threads: int | None = None  # CPU threads of torch (None: its default)
    data_root: str = ""  # the public data folder (real presets)


@dataclass
class Workload:
    """What every variant trains on: the LoRA model, the safety tokens and anchors, and each step's batch."""

    model: object
    tokens: object
    anchors: object
    batches: list[dict]


def toy_artifacts() -> Path:
    """The toy's safety tokens and anchors, made once into the cache (the demo's settings) before any variant runs."""
    from logitguard.lab.demo import DemoConfig, make_artifacts
    from logitguard.lab.toy.setting import ToySetting
    from logitguard.models.cache import cache_root

    config = DemoConfig()
    setting = ToySetting(config.recipe)
    folder = cache_root() / f"bench-toy-artifacts-{config.recipe.key()}"
    make_artifacts(setting, config, folder)
    return folder


def toy_workload(s: Settings, artifacts: Path) -> Workload:
    """The toy aligned model with fresh LoRA adapters, its anchors, and ``warmup + steps`` batches of benign data."""
    import random

    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.data.chat import collate, encode_chat
    from logitguard.lab.demo import DemoConfig
    from logitguard.lab.finetune import lora_model
    from logitguard.lab.toy.setting import ToySetting

    config = DemoConfig()
    setting = ToySetting(config.recipe)
    model = lora_model(setting, config.finetune)
    examples = [encode_chat(setting.tokenizer, p, r) for p, r in setting.benign_data()]
    draw = random.Random(0)
    batches = [
        collate(draw.sample(examples, s.batch), setting.tokenizer.pad_token_id) for _ in range(s.warmup + s.steps)
    ]
    batches = [{k: v.to(s.device) for k, v in b.items()} for b in batches]
    tokens = SafetyTokens.load(artifacts / "safety_tokens.json")
    return Workload(model, tokens, AnchorCache.load(artifacts / "anchors.safetensors"), batches)


def random_workload(s: Settings) -> Workload:
    """A random-weight Llama of the preset's shape with LoRA, synthetic anchors and one batch of full rows."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.model_access import weights_fingerprint
    from logitguard.core.safety_tokens import SafetyTokens

    p = PRESETS[s.preset]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["heads"],
        max_position_embeddings=max(s.seq, s.anchor_length),
    )
    with torch.device(s.device):
        model = LlamaForCausalLM(config).to(getattr(torch, s.dtype))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    ids = torch.arange(100, 100 + s.k)
    tokens = SafetyTokens(ids.tolist(), [str(i) for i in ids.tolist()], [1.0] * s.k, "benchmark")
    n_anchors, length = 64, s.anchor_length
    target = torch.zeros(n_anchors, length, dtype=torch.bool)
    target[:, length // 2 : -1] = True
    anchors = AnchorCache(
        input_ids=torch.randint(0, p["vocab"], (n_anchors, length)),
        attention_mask=torch.ones(n_anchors, length, dtype=torch.long),
        target_mask=target,
        ref_logits=torch.randn(n_anchors, length, s.k) * target.unsqueeze(-1),
        ref_logsumexp=torch.randn(n_anchors, length) * target,
        ref_target_logits=torch.randn(n_anchors, length) * target,
        token_ids=ids,
        model_fingerprint=weights_fingerprint(model),
    )
    input_ids = torch.randint(0, p["vocab"], (s.batch, s.seq), device=s.device)
    labels = input_ids.clone()
    labels[:, : s.seq // 2] = -100  # completion-only loss on the second half
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return Workload(model, tokens, anchors, [batch] * (s.warmup + s.steps))


def qwen_workload(s: Settings, work: Path) -> Workload:
    """The real-model benchmark's step: the aligned model with fresh LoRA adapters (its benchmark's settings), its
    anchors from the ``real_qwen`` work folder, and ``warmup + steps`` batches of its short GSM8K training rows."""
    import random

    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.data.chat import collate, encode_chat
    from logitguard.lab.demo import REAL_DEMOS
    from logitguard.lab.finetune import lora_model
    from logitguard.lab.gsm8k import N_TRAIN, finetune_config

    model_name = PRESETS[s.preset]["model"]
    setting = REAL_DEMOS[model_name].setting(Path(s.data_root), model_name)
    model = lora_model(setting, finetune_config(0))
    examples = [encode_chat(setting.tokenizer, p, r) for p, r in setting.benign_data(N_TRAIN, 0)]
    draw = random.Random(0)
    batches = [
        collate(draw.sample(examples, s.batch), setting.tokenizer.pad_token_id) for _ in range(s.warmup + s.steps)
    ]
    tokens = SafetyTokens.load(work / "default" / "safety_tokens.json")
    return Workload(model, tokens, AnchorCache.load(work / "default" / "anchors.safetensors"), batches)


def workload(s: Settings, artifacts: str | None) -> Workload:
    if s.preset == "toy":
        return toy_workload(s, Path(artifacts))
    return qwen_workload(s, Path(artifacts)) if s.preset in REAL else random_workload(s)


def make_trainer(name: str, s: Settings, work: Workload):
    """The variant's trainer (``transformers.Trainer`` for SFT, ``STRTrainer`` otherwise) with its optimizer."""
    from transformers import Trainer, TrainingArguments

    from logitguard.baselines import full_vocabulary_tokens
    from logitguard.core.config import STRConfig
    from logitguard.hosts.trainer import STRTrainer

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=s.batch,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=s.device == "cpu",
        bf16=s.dtype == "bfloat16",
    )
    spec = VARIANTS[name]
    if spec is None:
        trainer = Trainer(model=work.model, args=args)
    else:
        spec = dict(spec)
        tokens = work.tokens
        if spec.pop("all_tokens", False):
            vocab = work.model.get_output_embeddings().weight.shape[0]
            tokens = full_vocabulary_tokens(_Vocabulary(vocab))
        config = STRConfig(**{"penalty": "kl", "weight": 0.3, "anchors_per_step": s.anchors_per_step, **spec})
        trainer = STRTrainer(model=work.model, args=args, str_config=config, safety_tokens=tokens, anchors=work.anchors)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


class _Vocabulary:
    """A stand-in tokenizer of ``n`` tokens for the full-vocabulary peer (only its size and vocabulary are read)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get_vocab(self) -> dict[str, int]:
        return {str(i): i for i in range(self.n)}


def train_steps(trainers: dict, batches: list[dict], s: Settings) -> dict[str, list[float]]:
    """Each trainer's optimizer steps over ``batches``, round robin (one step of each variant in turn, so every
    variant meets the same moments of a noisy machine); each step's seconds per variant, warmup steps dropped."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in trainers}
    for step, batch in enumerate(batches):
        num_items = (batch["labels"][:, 1:] != -100).sum()
        for name, trainer in trainers.items():
            if s.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.training_step(trainer.model, dict(batch), num_items)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if s.device == "cuda":
                torch.cuda.synchronize()
            if step >= s.warmup:
                times[name].append(time.perf_counter() - start)
            trainer.state.global_step += 1
    return times


def run_variants(names: list[str], s: Settings, artifacts: str | None, queue: mp.Queue) -> None:
    """Train every variant of ``names`` in this process, round robin; put each one's step times on ``queue``, and,
    for a single variant, its peak memory (so a process measures either paired times or one variant's peak)."""
    import torch

    if s.threads:
        torch.set_num_threads(s.threads)
    trainers, batches = {}, None
    for name in names:
        work = workload(s, artifacts)
        trainers[name], batches = make_trainer(name, s, work), work.batches
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = train_steps(trainers, batches, s)
    if s.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put((times, peak))


def measure(names: list[str], s: Settings, artifacts: str | None) -> tuple[dict[str, list[float]], int]:
    """``run_variants`` in a fresh process."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_variants, args=(names, s, artifacts, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny-32k")
    parser.add_argument("--seq", type=int, default=512, help="task tokens per row (random presets)")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: 16 on the toy, else 8)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--anchors-per-step", type=int, default=8)
    parser.add_argument("--anchor-length", type=int, default=64, help="tokens per synthetic anchor (random presets)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 steadies small models' timings)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--main", action="store_true", help=f"only the main variants: {', '.join(MAIN)}")
    parser.add_argument("--frontier", action="store_true", help="the variants of the real-model cost frontier")
    parser.add_argument("--work", type=Path, default=Path("real-qwen-work"), help="real presets: real_qwen's --work")
    parser.add_argument("--data-root", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "str_overhead.json")
    parser.add_argument("--table", action="store_true", help="print the tables of --out and stop")
    a = parser.parse_args(argv)
    if a.table:
        print(table(json.loads(a.out.read_text(encoding="utf-8"))))
        return
    batch = a.batch or (16 if a.preset == "toy" else 8)
    s = Settings(
        a.preset,
        a.seq,
        batch,
        a.steps,
        a.warmup,
        a.anchors_per_step,
        a.anchor_length,
        a.k,
        a.device,
        a.dtype,
        a.threads,
        str(a.data_root),
    )
    from logitguard.io import write_json

    artifacts = artifacts_of(a.preset, a.work)
    key = f"{a.preset} {a.device} {a.dtype}"
    earlier = json.loads(a.out.read_text(encoding="utf-8")) if a.out.is_file() else {"runs": {}}
    device = device_name(a.device)
    variants = MAIN if a.main else FRONTIER if a.frontier else a.variants
    if "sft" not in variants:
        variants = ["sft", *variants]
    times: dict[str, list[list[float]]] = {name: [] for name in variants}
    baselines: dict[str, list[list[float]]] = {name: [] for name in variants}  # SFT's steps beside each variant's
    peaks: dict[str, list[int]] = {name: [] for name in variants}
    for repeat in range(a.repeats):
        if a.device == "cpu" and a.preset in REAL:  # each variant beside SFT in a process of its own, round robin
            for name in variants:
                pair_times, _ = measure(["sft", name] if name != "sft" else ["sft"], s, artifacts)
                times[name].append(pair_times[name])
                baselines[name].append(pair_times["sft"])
        elif a.device == "cpu":  # every variant in one process, round robin: paired times on a noisy machine
            round_times, _ = measure(variants, s, artifacts)
            for name in variants:
                times[name].append(round_times[name])
                baselines[name].append(round_times["sft"])
        for name in variants:  # each variant alone: its peak memory (and, on a GPU, its times)
            alone = replace(s, steps=s.steps if a.device != "cpu" else 2, warmup=min(s.warmup, 1))
            own_times, peak = measure([name], alone, artifacts)
            peaks[name].append(peak)
            if a.device != "cpu":
                times[name].append(own_times[name])
        baselines = baselines if a.device == "cpu" else {name: times["sft"] for name in variants}
        earlier["runs"][key] = summary(s, a.repeats, times, baselines, peaks) | device  # a stopped run keeps it
        write_json(a.out, earlier)
        print(f"repeat {repeat} done", flush=True)
    print(table(earlier))


def artifacts_of(preset: str, work: Path) -> str | None:
    """What a preset's workload reads: the toy's artifacts (made once), a real model's work folder, or nothing."""
    if preset == "toy":
        return str(toy_artifacts())
    if preset in REAL:
        if not (work / "default" / "anchors.safetensors").is_file():
            raise SystemExit(
                f"{work}: no default anchors; run python -m benchmarks.real_qwen --prepare-only "
                f'--methods "str (anchors, default)" --work {work}'
            )
        return str(work)
    return None


def device_name(device: str) -> dict:
    import torch

    return {"device_name": torch.cuda.get_device_name()} if device == "cuda" else {"device_name": "2 CPU cores"}


def summary(
    s: Settings,
    repeats: int,
    times: dict[str, list[list[float]]],
    baselines: dict[str, list[list[float]]],
    peaks: dict[str, list[int]],
) -> dict:
    """The JSON entry of one preset. Per variant: ms per step (median over repeats of each repeat's mean), its time
    against SFT's (the median, over every step of every repeat, of its step time over the step SFT took in the same
    round of the same process, ``baselines``; on a GPU, of each repeat's mean over SFT's), and its peak memory
    (median over repeats)."""
    variants = {}
    for name, runs in times.items():
        if not runs:
            continue
        sft = baselines[name]
        if s.device == "cpu":
            ratios = [
                t / base for run, base_run in zip(runs, sft, strict=True) for t, base in zip(run, base_run, strict=True)
            ]
        else:
            ratios = [statistics.mean(run) / statistics.mean(base) for run, base in zip(runs, sft, strict=True)]
        variants[name] = {
            "ms_per_step": 1000 * statistics.median(statistics.mean(run) for run in runs),
            "time_vs_sft": statistics.median(ratios),
            "peak_mib": statistics.median(peaks[name]) / 2**20,
            "repeats": [
                {"ms_per_step": 1000 * statistics.mean(run), "peak_mib": peak / 2**20}
                for run, peak in zip(runs, peaks[name], strict=False)
            ],
        }
    timing = "each variant alone"
    if s.device == "cpu":
        timing = (
            "paired: each variant beside SFT in a process of its own, round robin"
            if s.preset in REAL
            else ("paired: every variant in one process, round robin")
        )
    return {
        "settings": asdict(s) | {"repeats": repeats, "step_statistic": "mean", "timing": timing} | PRESETS[s.preset],
        "measured": time.strftime("%Y-%m-%d"),
        "variants": variants,
    }


def table(results: dict) -> str:
    """One markdown table per measured preset and device, times and peaks against plain SFT's."""
    lines = []
    for key, run in results["runs"].items():
        s, variants = run["settings"], run["variants"]
        if s["preset"] == "toy":
            shape = (
                f"the toy model on its benign data, batch {s['batch']}, {s['anchors_per_step']} real anchors per step"
            )
        elif "model" in s:
            shape = (
                f"{s['model']} on its benchmark's GSM8K rows, batch {s['batch']}, {s['anchors_per_step']} of its real "
                "anchors per step, each variant timed beside SFT"
            )
        else:
            shape = (
                f"vocab {s['vocab']}, hidden {s['hidden']}, {s['layers']} layers, batch {s['batch']} × {s['seq']} "
                f"tokens, {s['anchors_per_step']} anchors × {s['anchor_length']} tokens per step"
            )
        when = f", measured {run['measured']}" if "measured" in run else ""
        lines += [
            f"{key}: {shape}, LoRA r16, k={s['k']}; median over repeats of the {s.get('step_statistic', 'median')} "
            f"over {s['steps']} steps"
            + (f" on {run['device_name']}" if "device_name" in run else "")
            + (f", {s['threads']} thread" if s.get("threads") else "")
            + when,
            *([f"({run['note']})"] if "note" in run else []),
            "",
            "| variant | repeats | ms / step | × SFT time | peak MiB | × SFT peak |",
            "|---|---|---|---|---|---|",
        ]
        base = variants.get("sft")
        for name, v in variants.items():
            ratio = v.get("time_vs_sft", v["ms_per_step"] / base["ms_per_step"] if base else None)
            time_ratio = f"{ratio:.3f}" if ratio is not None else "—"
            peak_ratio = f"{v['peak_mib'] / base['peak_mib']:.3f}" if base else "—"
            cells = f"{len(v['repeats'])} | {v['ms_per_step']:.0f} | {time_ratio} | {v['peak_mib']:.0f} | {peak_ratio}"
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    main()
