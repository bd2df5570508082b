"""The demo's experiment: the problem and the fix, end to end on the embedded toy model.

Builds (or loads from cache) a tiny aligned chat model, makes its STR artifacts (safety tokens, anchor
references), then LoRA-fine-tunes it on benign instruction data twice with the same seed and budget, through
``transformers.Trainer`` as a user would: plain SFT, and SFT with Safety Token Regularization. Evaluates all
three models on held-out prompts and writes ``results.json``, ``report.md`` and ``refusal_curve.png``.
The command is :mod:`logitguard.lab.demo_command`; the benchmarks reuse :func:`set_up` and
:func:`~logitguard.lab.finetune.finetune`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from logitguard.artifacts import ANCHORS_FILE, TOKENS_FILE, safety_artifacts
from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.config import STRConfig
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.errors import LogitGuardError
from logitguard.evaluation.metrics import metric_columns
from logitguard.evaluation.plots import plot_refusal_curves
from logitguard.io import ensure_writable_dir, write_json, write_text
from logitguard.lab.finetune import FinetuneConfig, finetune
from logitguard.lab.toy.model import ToyRecipe
from logitguard.lab.toy.setting import ToySetting
from logitguard.settings import LoraSection

TOY_COLUMNS = metric_columns(
    ["harmful_refusal", "harmful_refusal_opening", "benign_over_refusal", "benign_skills", "task_accuracy"]
)


def default_finetune() -> FinetuneConfig:
    return FinetuneConfig(
        steps=500, batch_size=16, lr=3e-3, warmup_steps=10, lora=LoraSection(r=16, alpha=32, dropout=0.05)
    )


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults are the ones the README reports."""

    seed: int = 0
    finetune: FinetuneConfig = field(default_factory=default_finetune)
    str_config: STRConfig = field(default_factory=STRConfig)
    k: int = 24
    n_anchor_prompts: int = 256
    anchor_phrasings: int | None = None  # anchors from the first N training phrasings only (None: all of them)
    n_discovery_benign: int = 128
    recipe: ToyRecipe = field(default_factory=ToyRecipe)

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise LogitGuardError(f"k (number of safety tokens) must be > 0, got {self.k}")

    def with_seed(self, seed: int) -> DemoConfig:
        """The same settings with the fine-tuning runs (LoRA init, data order, anchors) seeded by ``seed``."""
        return replace(self, seed=seed, finetune=replace(self.finetune, seed=seed))


@dataclass
class DemoSetup:
    """What every fine-tuning run shares: the toy setting, the aligned model's results and the STR artifacts."""

    setting: ToySetting
    aligned: dict
    tokens: SafetyTokens
    anchors: AnchorCache


def make_artifacts(
    setting: ToySetting, config: DemoConfig, folder: Path, model=None
) -> tuple[SafetyTokens, AnchorCache]:
    """The toy's safety tokens and anchors in ``folder`` (made from the aligned model's own refusals, or loaded)."""
    return safety_artifacts(
        model if model is not None else setting.load_aligned(),
        setting.tokenizer,
        folder / TOKENS_FILE,
        folder / ANCHORS_FILE,
        harmful=setting.anchor_prompts(config.n_anchor_prompts, config.seed, config.anchor_phrasings),
        benign=setting.discovery_benign(config.n_discovery_benign),
        refusals="generate",
        k=config.k,
    )


def set_up(config: DemoConfig, out: Path) -> DemoSetup:
    """Build or load the toy models, evaluate the aligned one, and write its safety tokens and anchors to ``out``."""
    setting = ToySetting(config.recipe)
    model = setting.load_aligned()
    aligned = {"metrics": setting.evaluate(model), "samples": setting.samples(model)}
    tokens, anchors = make_artifacts(setting, config, out, model)
    return DemoSetup(setting, aligned, tokens, anchors)


def run_demo(config: DemoConfig, out: Path) -> dict:
    """Run the whole demo, writing every artifact into ``out``; returns the results."""
    ensure_writable_dir(out)
    started = time.perf_counter()
    setup = set_up(config, out)
    data = setup.setting.benign_data()
    results = {
        "aligned": setup.aligned,
        "sft": finetune(setup.setting, config.finetune, data, out / "sft"),
        "str": finetune(
            setup.setting,
            config.finetune,
            data,
            out / "str",
            "str",
            str_config=config.str_config,
            tokens=setup.tokens,
            anchors=setup.anchors,
        ),
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
    write_demo_outputs(summary, out, "toy aligned model")
    return summary


GSM8K_COLUMNS = metric_columns(
    [
        *("harmful_refusal", "harmful_refusal_opening", "lookalike_over_refusal", "benign_over_refusal"),
        *("task_accuracy", "task_format", "task_nll"),
    ],
    task_accuracy="GSM8K accuracy",
    task_nll="GSM8K answer NLL",
)


@dataclass(frozen=True)
class RealDemo:
    """How the demo runs a real model: its held-out evaluation, its step budget, and whether STR is two-sided."""

    evaluation: str = "safety-tuned-llamas"
    steps: int = 80
    two_sided: bool = False
    n_task: int | None = None  # GSM8K problems answered by generation (the costliest part); None: the setting's

    def setting(self, data_root: Path, model: str, progress: bool = False):
        """The :class:`~logitguard.lab.gsm8k.GSM8KSetting` that trains and judges ``model`` in this demo (and in
        the benchmark of the same model)."""
        from logitguard.lab.gsm8k import GSM8KSetting

        sizes = {} if self.n_task is None else {"n_task": self.n_task}
        return GSM8KSetting(data_root, model=model, evaluation=self.evaluation, progress=progress, **sizes)


REAL_DEMOS = {  # the benchmarks' settings too (benchmarks/real_qwen.py, benchmarks/real_smollm2.py)
    "smollm2-135m-safe": RealDemo(),
    # 192-token GSM8K answers from a 0.5B model are the slowest part of an evaluation on a CPU: 20, not 50
    "qwen2.5-coder-0.5b": RealDemo("public-held-out", 40, two_sided=True, n_task=20),
    "qwen2.5-coder-1.5b": RealDemo("public-held-out", 40, two_sided=True, n_task=20),
}


def run_real_demo(model: str, data_root: Path, out: Path, steps: int | None = None, seed: int = 0) -> dict:
    """The demo on a real aligned chat model: SFT and SFT + STR on GSM8K from the same seed (one run each), for
    ``steps`` steps (default: the benchmark's budget for that model, :data:`REAL_DEMOS`).

    STR's artifacts come from the model's own refusals to the built-in harmful prompts and, two-sided (the Qwen
    models), its own answers to 128 safe look-alikes of the training side of the public over-refusal sets; the
    refusal curve is measured every 10 steps on held-out harmful prompts. Writes what :func:`run_demo` writes.
    """
    from logitguard.artifacts import BENIGN_ANCHORS_FILE, prepare_artifacts
    from logitguard.lab.gsm8k import N_TRAIN, finetune_config
    from logitguard.lab.public_data import lookalike_training_prompts

    demo = REAL_DEMOS.get(model, RealDemo())
    ensure_writable_dir(out)
    started = time.perf_counter()
    setting = demo.setting(data_root, model, progress=True)
    aligned_model = setting.load_aligned()
    aligned = {"metrics": setting.evaluate(aligned_model), "samples": setting.samples(aligned_model)}
    benign_path = out / BENIGN_ANCHORS_FILE if demo.two_sided else None
    lookalike = lookalike_training_prompts(data_root) if demo.two_sided else ()
    prepared = prepare_artifacts(
        aligned_model,
        setting.tokenizer,
        out / TOKENS_FILE,
        out / ANCHORS_FILE,
        benign_anchors_path=benign_path,
        lookalike=lookalike,
    )
    tokens, anchors = prepared.save()
    del aligned_model
    tune = finetune_config(seed, steps or demo.steps)
    data = setting.benign_data(N_TRAIN, seed)
    str_config = STRConfig(benign_anchors_per_step=8 if demo.two_sided else 0)
    name = "two-sided str" if demo.two_sided else "str"
    str_run = finetune(
        setting,
        tune,
        data,
        out / "str",
        "str",
        str_config=str_config,
        tokens=tokens,
        anchors=anchors,
        benign_anchors=prepared.benign_anchors,
    )
    results = {"aligned": aligned, "sft": finetune(setting, tune, data, out / "sft"), name: str_run}
    summary = {
        "config": {
            "model": model,
            "seed": seed,
            "finetune": asdict(tune),
            "str_config": asdict(str_config),
            "k": tokens.k,
        },
        "models": {name: r["metrics"] for name, r in results.items()},
        "refusal_curves": {name: r["curve"] for name, r in results.items() if "curve" in r},
        "samples": {name: r["samples"] for name, r in results.items()},
        "safety_tokens": tokens.tokens,
        "anchors": len(anchors),
        "benign_anchors": len(prepared.benign_anchors) if prepared.benign_anchors is not None else 0,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_demo_outputs(summary, out, f"{model} on GSM8K", GSM8K_COLUMNS)
    return summary


def write_demo_outputs(
    summary: dict, out: Path, model_name: str, columns: dict[str, tuple[str, bool]] = TOY_COLUMNS
) -> None:
    """``results.json``, ``report.md`` and ``refusal_curve.png`` of a demo run (the toy's or a real model's)."""
    write_json(out / "results.json", summary)
    write_text(out / "report.md", markdown_report(summary, model_name, columns))
    curves = {
        name: [(c["step"], c["harmful_refusal"]) for c in curve] for name, curve in summary["refusal_curves"].items()
    }
    if any(curves.values()):
        plot_refusal_curves(curves, out / "refusal_curve.png", "Refusals that end, during fine-tuning")


def results_table(models: dict[str, dict], columns: dict[str, tuple[str, bool]] = TOY_COLUMNS) -> str:
    """A markdown table: one row per model, one column per metric it has (percentages), and the step time."""
    keys = [key for key in columns if any(key in m for m in models.values())]
    header = "| model | " + " | ".join(columns[key][0] for key in keys) + " | ms / step |"
    rule = "|---" * (len(keys) + 2) + "|"
    rows = []
    for name, m in models.items():
        cells = [f"{100 * m[key]:.1f}%" if key in m else "—" for key in keys]
        step = f"{m['step_time_ms']:.0f}" if "step_time_ms" in m else "—"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {step} |")
    return "\n".join([header, rule, *rows])


def markdown_report(summary: dict, model_name: str, columns: dict[str, tuple[str, bool]] = TOY_COLUMNS) -> str:
    cfg = summary["config"]
    tune, str_cfg = cfg["finetune"], cfg["str_config"]
    return "\n".join(
        [
            "# LogitGuard demo",
            "",
            f"{model_name}, LoRA r={tune['lora']['r']}, {tune['steps']} steps, seed {cfg['seed']}; "
            f"STR: penalty {str_cfg['penalty']}, λ={str_cfg['weight']}, k={cfg['k']}, "
            f"rest bucket {'on' if str_cfg['rest_bucket'] else 'off'}, "
            f"target bucket {'on' if str_cfg['target_bucket'] else 'off'}, "
            f"{summary['anchors']} anchors ({str_cfg['anchors_per_step']} per step).",
            "",
            "Harmful refusal counts refusals that end; a refusal that goes on to comply is an attack success "
            "(the opening-only rate is beside it).",
            "",
            results_table(summary["models"], columns),
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
