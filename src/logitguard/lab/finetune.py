"""One fine-tuning run of an experiment, through the user's path: a fresh LoRA adapter and the method's trainer.

The demo and the benchmarks compare methods on a *setting* (the toy corpus, or a real model and data): the
aligned model, its tokenizer, an evaluation and a few held-out harmful prompts to monitor. :func:`finetune` trains
one method on one data set exactly as ``logitguard train`` would (the trainer of
:func:`~logitguard.hosts.builder.build_trainer`, the :class:`~logitguard.hosts.monitor.SafetyMonitor` callback for
the refusal curve), evaluates the result and saves the adapter and the training log.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from peft import get_peft_model
from torch import nn
from transformers import PreTrainedTokenizerBase, PrinterCallback, TrainerCallback

from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.config import STRConfig
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.data.chat import collate, encode_chat, length_grouped_order
from logitguard.domains import NON_NEGATIVE, POSITIVE, at_least, check_fields, within
from logitguard.errors import LogitGuardError
from logitguard.hosts.builder import build_trainer
from logitguard.hosts.monitor import SafetyMonitor
from logitguard.io import atomic_directory, write_json
from logitguard.models.adapters import save_adapter
from logitguard.settings import LoraSection


class Setting(Protocol):
    """What an experiment fine-tunes and how it judges the result."""

    aligned: str  # the aligned model: a folder, or a name logitguard.models.loading resolves
    tokenizer: PreTrainedTokenizerBase
    monitor_prompts: list[str]  # held-out harmful prompts whose refusal is tracked during training
    monitor_tokens: int  # answer length while monitoring

    def load_aligned(self) -> nn.Module: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def samples(self, model: nn.Module) -> list[dict]: ...


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (``TrainingArguments`` and LoRA), the same for every method compared."""

    steps: int = field(default=100, metadata=at_least(1))
    batch_size: int = field(default=16, metadata=at_least(1))
    lr: float = field(default=1e-3, metadata=within(POSITIVE))
    warmup_steps: int = field(default=10, metadata=within(NON_NEGATIVE))
    weight_decay: float = field(default=0.0, metadata=within(NON_NEGATIVE))
    max_grad_norm: float = field(default=1.0, metadata=within(NON_NEGATIVE))
    seed: int = field(default=0, metadata=within(NON_NEGATIVE))
    lora: LoraSection = field(default_factory=LoraSection)
    monitor_every: int = 50  # refusal-curve points (0: none)
    logging_steps: int = 10
    length_grouped: bool = False  # batches of similar length (data.length_grouped_order): less padding, less time

    def __post_init__(self) -> None:
        check_fields(self)

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
    method: str = "sft",
    *,
    str_config: STRConfig | None = None,
    tokens: SafetyTokens | None = None,
    anchors: AnchorCache | None = None,
    benign_anchors: AnchorCache | None = None,
    model: nn.Module | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune a fresh LoRA adapter on ``examples`` with ``method`` (a
    :data:`~logitguard.hosts.builder.TRAINING_METHODS` name); evaluate it and save it into ``out``.

    STR takes ``str_config`` and the safety ``tokens``, ``anchors`` and (two-sided) ``benign_anchors``. ``model``
    is the fresh LoRA model when the caller made it already (selection scores it before training). Returns
    ``metrics`` (the setting's evaluation plus ``step_time_ms``), the refusal ``curve`` and ``samples``; writes
    ``out/adapter`` and ``out/history.json`` (the Trainer's log).
    """
    if not examples:
        raise LogitGuardError("no fine-tuning examples")
    tokenizer = setting.tokenizer
    model = model if model is not None else lora_model(setting, config)
    encoded = [encode_chat(tokenizer, p, r) for p, r in examples]
    if config.length_grouped:
        lengths = [len(e["input_ids"]) for e in encoded]
        encoded = [encoded[i] for i in length_grouped_order(lengths, config.batch_size, config.steps, config.seed)]
    timer = StepTimes()
    trainer = build_trainer(
        method,
        model=model,
        args=config.training_arguments(out / "checkpoints", progress),
        train_dataset=encoded,
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[timer],
        str_config=str_config,
        tokens=tokens,
        anchors=anchors,
        benign_anchors=benign_anchors,
    )
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
