"""One fine-tuning run of an experiment, through the user's path: a fresh LoRA adapter and ``STRTrainer``.

The demo and the benchmarks compare methods on a *setting* (the toy corpus, or a real model and data): the
aligned model, its tokenizer, an evaluation and a few held-out harmful prompts to monitor. ``finetune`` trains
one method on one data set exactly as ``logitguard train`` would (``transformers.Trainer`` with
:class:`~logitguard.str_trainer.STRTrainer`, the :class:`~logitguard.monitor.SafetyMonitor` callback for the
refusal curve), evaluates the result and saves the adapter and the training log.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback

from logitguard.anchors import AnchorCache
from logitguard.custom_loop import TrainConfig
from logitguard.data import collate, encode_chat, length_grouped_order
from logitguard.discovery import SafetyTokens
from logitguard.errors import LogitGuardError
from logitguard.io import atomic_directory, write_json
from logitguard.regularizer import STRConfig
from logitguard.run_config import LoraSection


class Setting(Protocol):
    """What an experiment fine-tunes and how it judges the result."""

    aligned: str  # the aligned model: a folder, or a name logitguard.models resolves
    tokenizer: PreTrainedTokenizerBase
    monitor_prompts: list[str]  # held-out harmful prompts whose refusal is tracked during training
    monitor_tokens: int  # answer length while monitoring

    def load_aligned(self) -> nn.Module: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def samples(self, model: nn.Module) -> list[dict]: ...


@dataclass
class FinetuneConfig(TrainConfig):
    """Settings of one fine-tuning run (``TrainingArguments`` and LoRA), the same for every method compared."""

    lora: LoraSection = field(default_factory=LoraSection)
    monitor_every: int = 50  # refusal-curve points (0: none)
    logging_steps: int = 10
    length_grouped: bool = False  # batches of similar length (data.length_grouped_order): less padding, less time

    def training_arguments(self, output_dir: Path, progress: bool = True):
        from transformers import TrainingArguments

        return TrainingArguments(
            output_dir=str(output_dir),
            max_steps=self.steps,
            per_device_train_batch_size=self.batch_size,
            learning_rate=self.lr,
            lr_scheduler_type="cosine",
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            logging_steps=self.logging_steps,
            save_strategy="no",
            report_to=[],
            seed=self.seed,
            data_seed=self.seed,
            train_sampling_strategy="sequential" if self.length_grouped else "random",  # grouped: ordered in finetune
            use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=False,
            disable_tqdm=not progress,
        )


def lora_model(setting: Setting, config: FinetuneConfig) -> nn.Module:
    """A fresh LoRA adapter (initialised under ``config.seed``) on the aligned model."""
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    return get_peft_model(setting.load_aligned(), config.lora.peft_config())


class StepTimes(TrainerCallback):
    """Wall time of each optimizer step (the median is the step time the benchmarks report)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def finetune(
    setting: Setting,
    config: FinetuneConfig,
    examples: Sequence[tuple[str, str]],
    out: Path,
    str_config: STRConfig | None = None,
    tokens: SafetyTokens | None = None,
    anchors: AnchorCache | None = None,
    constrained: bool = False,
    model: nn.Module | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune a fresh LoRA adapter on ``examples``; evaluate it and save it into ``out``.

    Plain SFT by default; STR with ``str_config`` (and the safety ``tokens`` and ``anchors`` it uses), or
    token-wise constrained SFT (Qi et al.) with ``constrained``. ``model`` is the fresh LoRA model when the
    caller made it already (selection scores it before training). Returns ``metrics`` (the setting's evaluation
    plus ``step_time_ms``), the refusal ``curve`` and ``samples``; writes ``out/adapter`` and
    ``out/history.json`` (the Trainer's log).
    """
    from transformers import PrinterCallback, Trainer

    from logitguard.baselines import ConstrainedSFTTrainer, label_log_probs
    from logitguard.models import save_adapter
    from logitguard.monitor import SafetyMonitor
    from logitguard.str_trainer import STRTrainer

    if not examples:
        raise LogitGuardError("no fine-tuning examples")
    tokenizer = setting.tokenizer
    model = model if model is not None else lora_model(setting, config)
    encoded = [encode_chat(tokenizer, p, r) for p, r in examples]
    if constrained:  # the model before any update is the aligned reference
        for example, log_probs in zip(encoded, label_log_probs(model, encoded, tokenizer.pad_token_id), strict=True):
            example["ref_log_probs"] = log_probs
    if config.length_grouped:
        lengths = [len(e["input_ids"]) for e in encoded]
        encoded = [encoded[i] for i in length_grouped_order(lengths, config.batch_size, config.steps, config.seed)]
    timer = StepTimes()
    common = {
        "model": model,
        "args": config.training_arguments(out / "checkpoints", progress),
        "train_dataset": encoded,
        "data_collator": lambda rows: collate(rows, tokenizer.pad_token_id),
        "processing_class": tokenizer,
        "callbacks": [timer],
    }
    if str_config is not None:
        if tokens is None:
            raise LogitGuardError("STR needs the safety tokens")
        trainer: Trainer = STRTrainer(**common, str_config=str_config, safety_tokens=tokens, anchors=anchors)
    elif constrained:
        trainer = ConstrainedSFTTrainer(**common)
    else:
        trainer = Trainer(**common)
    if not progress:
        trainer.remove_callback(PrinterCallback)  # no per-log prints either
    if config.monitor_every:
        monitor = SafetyMonitor(
            trainer, setting.monitor_prompts, config.monitor_every, max_new_tokens=setting.monitor_tokens
        )
        trainer.add_callback(monitor)
    trainer.train()
    model.eval()
    history = trainer.state.log_history
    with atomic_directory(out / "adapter") as tmp:
        save_adapter(model, tmp)
    write_json(out / "history.json", history)
    metrics = setting.evaluate(model)
    metrics["step_time_ms"] = 1000 * statistics.median(timer.times)
    curve = [
        {"step": e["step"], "harmful_refusal": e["safety/refusal_rate"]} for e in history if "safety/refusal_rate" in e
    ]
    return {"metrics": metrics, "curve": curve, "samples": setting.samples(model)}
