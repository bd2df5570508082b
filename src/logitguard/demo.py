"""`logitguard demo`: the problem and the fix, end to end on the embedded toy model.

Builds (or loads from cache) a tiny aligned chat model, discovers its safety
tokens, caches anchor references, then LoRA-fine-tunes it on benign
instruction data twice with the same seed and budget: plain SFT, and SFT with
Safety Token Regularization. Evaluates all three models on held-out prompts.

Run: ``logitguard demo [--out DIR] [--seed S]`` (about 2.5 minutes on 2 CPU cores once the toy models are cached).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from logitguard.anchors import AnchorCache, build_anchor_cache
from logitguard.data import chat_messages
from logitguard.discovery import SafetyTokens, discover_safety_tokens
from logitguard.generation import generate
from logitguard.io import atomic_directory, ensure_writable_dir, write_json, write_text
from logitguard.refusal import is_refusal
from logitguard.regularizer import STRConfig
from logitguard.selection import SelectionConfig, anchor_refusal_batch, run_selection, safety_direction
from logitguard.toy.corpus import ToyCorpus, build_corpus
from logitguard.toy.metrics import monitor_refusal, sample_responses, toy_metrics
from logitguard.toy.model import ToyRecipe, toy_models
from logitguard.training import TrainConfig, train

METRIC_LABELS = {
    "harmful_refusal": "held-out harmful refusal",
    "benign_over_refusal": "benign over-refusal",
    "benign_skills": "benign skills",
    "task_accuracy": "task accuracy",
}


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults are the ones README reports."""

    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=500, batch_size=16, lr=3e-3, warmup_steps=10))
    str_config: STRConfig = field(default_factory=STRConfig)
    k: int = 24
    lora_r: int = 16
    lora_alpha: int = 32
    n_anchor_prompts: int = 256
    n_discovery_benign: int = 128
    monitor_every: int = 50
    n_monitor_prompts: int = 64
    recipe: ToyRecipe = field(default_factory=ToyRecipe)

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ValueError(f"k (number of safety tokens) must be > 0, got {self.k}")

    def with_seed(self, seed: int) -> DemoConfig:
        """The same settings with the fine-tuning runs (LoRA init, data order, anchors) seeded by ``seed``."""
        return replace(self, seed=seed, train=replace(self.train, seed=seed))


@dataclass
class DemoSetup:
    """What every fine-tuning run of the demo shares: the aligned model's files, data, evaluation and STR artifacts."""

    aligned_path: Path
    tokenizer: PreTrainedTokenizerBase
    corpus: ToyCorpus
    aligned: dict
    tokens: SafetyTokens
    anchors: AnchorCache


def set_up(config: DemoConfig, out: Path) -> DemoSetup:
    """Build or load the toy models, evaluate the aligned one, and write its safety tokens and anchors to ``out``."""
    paths = toy_models(config.recipe)
    tokenizer = AutoTokenizer.from_pretrained(paths.aligned)
    model = AutoModelForCausalLM.from_pretrained(paths.aligned)
    corpus = build_corpus(config.recipe.seed)
    aligned = {
        "metrics": toy_metrics(model, tokenizer, corpus),
        "samples": sample_responses(model, tokenizer, corpus),
    }
    tokens, anchors = prepare_str(model, tokenizer, corpus, config, out)
    return DemoSetup(paths.aligned, tokenizer, corpus, aligned, tokens, anchors)


def lora_model(path: Path, config: DemoConfig) -> torch.nn.Module:
    """A fresh LoRA model on the aligned checkpoint, loaded through ``from_pretrained``."""
    torch.manual_seed(config.seed)
    base = AutoModelForCausalLM.from_pretrained(path)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.05, target_modules="all-linear")
    return get_peft_model(base, lora)


def select_examples(
    model: torch.nn.Module,
    setup: DemoSetup,
    examples: list[tuple[str, str]],
    selection: SelectionConfig,
    scores_path: Path,
    identity: dict,
) -> list[bool]:
    """Gradient-based selection of ``(prompt, response)`` examples on ``model`` (a fresh ``lora_model``): the keep
    mask; the safety score takes its direction from the anchors' refusals."""
    direction = None
    if selection.score == "safety":
        direction = safety_direction(model, anchor_refusal_batch(setup.anchors), selection.batch_size)
    samples = ((f"example {i}", chat_messages(p, r)) for i, (p, r) in enumerate(examples))
    return run_selection(model, setup.tokenizer, samples, selection, scores_path, identity, direction, len(examples))


def aligned_responses(model, tokenizer, prompts: list[str]) -> list[tuple[str, str]]:
    responses = generate(model, tokenizer, prompts, max_new_tokens=24, desc="aligned responses")
    return list(zip(prompts, responses, strict=True))


def prepare_str(model, tokenizer, corpus: ToyCorpus, config: DemoConfig, out: Path) -> tuple[SafetyTokens, AnchorCache]:
    """Discover the safety tokens and cache anchor references, both saved as artifacts in ``out``."""
    rng = random.Random(config.seed)
    harmful = [e.prompt for e in rng.sample(corpus.train_harmful, config.n_anchor_prompts)]
    benign = [e.prompt for e in corpus.aligned if e.kind == "benign"][: config.n_discovery_benign]
    harmful_pairs = aligned_responses(model, tokenizer, harmful)
    refusals = [(p, r) for p, r in harmful_pairs if is_refusal(r)]
    answers = [(p, r) for p, r in aligned_responses(model, tokenizer, benign) if not is_refusal(r)]
    tokens = discover_safety_tokens(model, tokenizer, refusals, answers, k=config.k)
    tokens.save(out / "safety_tokens.json")
    anchors = build_anchor_cache(model, tokenizer, refusals, tokens)
    anchors.save(out / "anchors.safetensors")
    return tokens, anchors


def finetune(
    name: str,
    config: DemoConfig,
    setup: DemoSetup,
    out: Path,
    str_config: STRConfig | None = None,
    examples: list[tuple[str, str]] | None = None,
    safety_ids: torch.Tensor | None = None,
) -> dict:
    """LoRA-fine-tune the aligned model (with STR when ``str_config`` is given); evaluate, save.

    ``examples`` replaces the benign fine-tuning set and ``safety_ids`` the discovered tokens (the
    benchmarks use them for mixed-in data and for a full-vocabulary KL baseline).
    """
    tokenizer, corpus = setup.tokenizer, setup.corpus
    model = lora_model(setup.aligned_path, config)
    monitor_prompts = [e.prompt for e in corpus.heldout_harmful[: config.n_monitor_prompts]]
    curve = [{"step": 0, "harmful_refusal": monitor_refusal(model, tokenizer, monitor_prompts)}]

    def on_step(step: int, logs: dict) -> None:
        if step % config.monitor_every == 0 or step == config.train.steps:
            curve.append({"step": step, "harmful_refusal": monitor_refusal(model, tokenizer, monitor_prompts)})

    history = train(
        model,
        tokenizer,
        examples if examples is not None else [(e.prompt, e.response) for e in corpus.instruct],
        config.train,
        str_config=str_config,
        safety_ids=safety_ids if safety_ids is not None else setup.tokens.id_tensor(),
        anchors=setup.anchors,
        on_step=on_step,
        desc=f"LoRA {name}",
    )
    with atomic_directory(out / name / "adapter") as tmp:
        model.save_pretrained(tmp)
    metrics = toy_metrics(model, tokenizer, corpus)
    metrics["step_time_ms"] = 1000 * statistics.median(h["step_time"] for h in history)
    write_json(out / name / "history.json", history)
    return {"metrics": metrics, "curve": curve, "samples": sample_responses(model, tokenizer, corpus)}


def run_demo(config: DemoConfig, out: Path) -> dict:
    """Run the whole demo, writing every artifact into ``out``; returns the results."""
    ensure_writable_dir(out)
    started = time.perf_counter()
    setup = set_up(config, out)
    results = {
        "aligned": setup.aligned,
        "sft": finetune("sft", config, setup, out),
        "str": finetune("str", config, setup, out, config.str_config),
    }
    summary = {
        "config": asdict(config),
        "models": {name: r["metrics"] for name, r in results.items()},
        "refusal_curves": {name: r["curve"] for name, r in results.items() if "curve" in r},
        "samples": {name: r["samples"] for name, r in results.items()},
        "safety_tokens": setup.tokens.tokens,
        "anchors": len(setup.anchors),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "results.json", summary)
    write_text(out / "report.md", markdown_report(summary))
    plot_refusal_curves(summary["refusal_curves"], out / "refusal_curve.png")
    return summary


def results_table(models: dict[str, dict]) -> str:
    """A markdown table: one row per model, one column per metric."""
    header = "| model | " + " | ".join(METRIC_LABELS.values()) + " | ms / step |"
    rule = "|---" * (len(METRIC_LABELS) + 2) + "|"
    rows = []
    for name, m in models.items():
        cells = [f"{100 * m[key]:.1f}%" for key in METRIC_LABELS]
        step = f"{m['step_time_ms']:.0f}" if "step_time_ms" in m else "—"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {step} |")
    return "\n".join([header, rule, *rows])


def markdown_report(summary: dict) -> str:
    cfg = summary["config"]
    return "\n".join(
        [
            "# LogitGuard demo",
            "",
            f"Toy aligned model, LoRA r={cfg['lora_r']}, {cfg['train']['steps']} steps, seed {cfg['seed']}; "
            f"STR: penalty {cfg['str_config']['penalty']}, λ={cfg['str_config']['weight']}, k={cfg['k']}, "
            f"rest bucket {'on' if cfg['str_config']['rest_bucket'] else 'off'}, "
            f"{summary['anchors']} anchors ({cfg['str_config']['anchors_per_step']} per step).",
            "",
            results_table(summary["models"]),
            "",
            "Safety tokens: " + ", ".join(f"`{t.strip() or repr(t)}`" for t in summary["safety_tokens"]),
            "",
            "![refusal rate during fine-tuning](refusal_curve.png)",
            "",
            "## Sample responses (held-out prompts, greedy)",
            "",
            *sample_lines(summary["samples"]),
        ]
    )


def sample_lines(samples: dict[str, list[dict]]) -> list[str]:
    lines = []
    for i, first in enumerate(next(iter(samples.values()))):
        lines += [f"**{first['kind']}**: {first['prompt']}", ""]
        lines += [f"- {name}: `{rows[i]['response']}`" for name, rows in samples.items()]
        lines.append("")
    return lines


def plot_refusal_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Held-out refusal rate against training step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, curve in curves.items():
        ax.plot([c["step"] for c in curve], [100 * c["harmful_refusal"] for c in curve], marker="o", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out harmful refusal (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Refusals during benign LoRA fine-tuning")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """``logitguard demo``: parse options, run the demo, print the table."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="logitguard demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new ./logitguard-demo-*)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning runs")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps per run")
    parser.add_argument("--penalty", default=None, help="STR penalty: mse or kl")
    parser.add_argument("--weight", type=float, default=None, help="STR weight lambda")
    parser.add_argument("--k", type=int, default=None, help="number of safety tokens")
    args = parser.parse_args(argv)

    try:
        config = DemoConfig().with_seed(args.seed)
        str_overrides = {"penalty": args.penalty, "weight": args.weight}
        config = replace(
            config,
            k=config.k if args.k is None else args.k,
            train=config.train if args.steps is None else replace(config.train, steps=args.steps),
            str_config=replace(config.str_config, **{key: v for key, v in str_overrides.items() if v is not None}),
        )
        out = args.out or Path(time.strftime("logitguard-demo-%Y%m%d-%H%M%S"))
        summary = run_demo(config, out)
    except (ValueError, PermissionError, NotADirectoryError) as err:
        print(f"logitguard demo: error: {err}", file=sys.stderr)
        return 2
    print(results_table(summary["models"]))
    print(f"\nwrote {out}/results.json, report.md and refusal_curve.png in {summary['seconds']:.0f} s")
    return 0
