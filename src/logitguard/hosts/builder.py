"""One way to build the trainer of a fine-tuning method, for every recipe: ``logitguard train``, the demo and the
benchmarks all call :func:`build_trainer` with a method's name.

:data:`TRAINING_METHODS` is the registry: plain SFT (``transformers.Trainer``), STR (:class:`STRTrainer`) and the
token-wise constrained SFT peer (:class:`~logitguard.baselines.ConstrainedSFTTrainer`, whose examples first get the
aligned model's label log-probabilities).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import Trainer

from logitguard.baselines import ConstrainedSFTTrainer, label_log_probs
from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.config import STRConfig
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.errors import LogitGuardError
from logitguard.hosts.trainer import STRTrainer

Examples = list[dict[str, list]]


def with_reference_log_probs(model: nn.Module, examples: Examples, pad_id: int) -> Examples:
    """The examples with ``ref_log_probs``: ``model``'s (the aligned model's, before any update) log-probability of
    each label token, computed once so no reference model is needed during training."""
    log_probs = label_log_probs(model, examples, pad_id)
    return [{**example, "ref_log_probs": lp} for example, lp in zip(examples, log_probs, strict=True)]


@dataclass(frozen=True)
class TrainingMethod:
    """How a method trains: its ``Trainer`` class, whether it takes STR's settings and artifacts, and what it adds
    to each encoded example before training (from the model about to be trained)."""

    trainer: type[Trainer]
    uses_str: bool = False
    prepare: Callable[[nn.Module, Examples, int], Examples] | None = None


TRAINING_METHODS: dict[str, TrainingMethod] = {
    "sft": TrainingMethod(Trainer),
    "str": TrainingMethod(STRTrainer, uses_str=True),
    "constrained-sft": TrainingMethod(ConstrainedSFTTrainer, prepare=with_reference_log_probs),
}


def build_trainer(
    method: str,
    *,
    model: nn.Module,
    args: Any,
    train_dataset: Examples,
    data_collator: Callable,
    processing_class: Any,
    callbacks: Sequence[Any] = (),
    str_config: STRConfig | None = None,
    tokens: SafetyTokens | None = None,
    anchors: AnchorCache | None = None,
    benign_anchors: AnchorCache | None = None,
) -> Trainer:
    """The trainer of ``method`` (a :data:`TRAINING_METHODS` name) on ``train_dataset`` (encoded examples).

    STR takes ``str_config``, the safety ``tokens``, the ``anchors`` and (two-sided) the ``benign_anchors``; a
    method's ``prepare`` step runs here, on the model before any update.
    """
    if method not in TRAINING_METHODS:
        raise LogitGuardError(f"unknown training method {method!r}; choose one of {sorted(TRAINING_METHODS)}")
    spec = TRAINING_METHODS[method]
    if spec.prepare is not None:
        train_dataset = spec.prepare(model, train_dataset, processing_class.pad_token_id)
    common = {
        "model": model,
        "args": args,
        "train_dataset": train_dataset,
        "data_collator": data_collator,
        "processing_class": processing_class,
        "callbacks": list(callbacks),
    }
    if not spec.uses_str:
        return spec.trainer(**common)
    if str_config is None or tokens is None:
        raise LogitGuardError(f"method {method!r} needs STR's settings and safety tokens")
    return spec.trainer(
        **common, str_config=str_config, safety_tokens=tokens, anchors=anchors, benign_anchors=benign_anchors
    )
