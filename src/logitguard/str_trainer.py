"""STR inside `transformers.Trainer` (and TRL's `SFTTrainer`, see :mod:`logitguard.str_sft_trainer`).

:class:`STRTrainerMixin` goes in front of a Trainer class and overrides
``compute_loss`` only to add λ·STR to whatever task loss the host computes
(Trainer's model loss, TRL's chunked NLL, DFT, label smoothing, ...):

* anchor rows join the task rows in the host's own forward pass, with labels
  ``-100`` so the task loss and ``num_items_in_batch`` do not see them (or run in
  a short forward of their own when the task rows are much longer, see
  ``STRConfig.anchor_pass``);
* a forward hook on the decoder stack keeps its final hidden states, from which
  :class:`~logitguard.regularizer.STRObjective` computes the STR terms (the same
  code as every other host);
* the task-batch reference comes from the same PEFT model with adapters disabled.

Each optimizer step's STR term is the mean over all its anchor (or label)
positions, across ranks and gradient-accumulation micro-batches, so the result
does not depend on how the global batch is split. ``log`` is extended to report
every term on its own (``task_loss``, ``str_anchor``, ``str_task``, ...), which
reaches TensorBoard or W&B through the Trainer's own reporting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from logitguard.anchors import AnchorCache
from logitguard.data import IGNORE_INDEX
from logitguard.discovery import SafetyTokens
from logitguard.errors import LogitGuardError
from logitguard.model_parts import decoder_stack
from logitguard.regularizer import AnchorRows, STRConfig, STRObjective


@contextmanager
def captured_hidden_states(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the final hidden states ``(B, L, d)`` of every decoder-stack forward run inside the block."""
    found: list[Tensor] = []

    def keep(_module: nn.Module, _args: Any, output: Any) -> None:
        found.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = decoder_stack(model).register_forward_hook(keep)
    try:
        yield found
    finally:
        handle.remove()


class STRTrainerMixin:
    """Adds Safety Token Regularization to a ``transformers.Trainer`` subclass.

    Use it first in the bases, e.g. ``class MyTrainer(STRTrainerMixin, Trainer)``.

    Args:
        str_config: STR settings.
        safety_tokens: the artifact of discovery (checked against the tokenizer by the caller, or by
            :func:`~logitguard.artifacts.safety_artifacts`).
        anchors: the anchor cache (required for ``reference`` ``"anchors"``/``"both"``); checked against
            the model here, so a cache from another model is a clear error.
    """

    def __init__(
        self,
        *args: Any,
        str_config: STRConfig,
        safety_tokens: SafetyTokens,
        anchors: AnchorCache | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if str_config.uses_anchors and anchors is not None:
            anchors.check(self.model, safety_tokens)
        self.str_objective = STRObjective(str_config, safety_tokens, anchors, seed=self.args.seed)
        self._micro_step = (-1, 0)  # (optimizer step, micro-batch index within it)
        self._str_metrics: dict[str, list[float]] = defaultdict(list)

    @property
    def str_config(self) -> STRConfig:
        return self.str_objective.config

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        if not model.training:  # evaluation reports the host's task loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "attention_mask" not in inputs or inputs["input_ids"].dim() != 2:
            raise LogitGuardError(
                "STR needs padded batches with an attention_mask; turn off padding_free/packing in the trainer args"
            )
        objective = self.str_objective
        rows = self._anchor_rows()
        forward = objective.forward_inputs(inputs, rows)
        host_inputs = {
            **inputs,
            "input_ids": forward.input_ids,
            "attention_mask": forward.attention_mask,
            "labels": forward.labels,
        }
        with captured_hidden_states(self.accelerator.unwrap_model(model)) as hidden_states:
            result = super().compute_loss(model, host_inputs, return_outputs, num_items_in_batch)
        task_loss, outputs = result if return_outputs else (result, None)
        peft_model = self.accelerator.unwrap_model(model)
        sums = objective.penalties(peft_model, hidden_states[0], inputs, rows, forward.shared)
        positions = inputs["labels"][:, 1:] != IGNORE_INDEX
        anchor_share = sums.anchor / rows.step_positions if rows is not None else sums.anchor
        task_share = sums.task / self._global_label_count(positions, num_items_in_batch)
        scale = self._micro_batch_scale(num_items_in_batch)  # this micro-batch's shares of the step's means
        loss = task_loss + objective.config.weight * scale * (anchor_share + task_share)
        parts = self.accelerator.num_processes * self._accumulation_steps
        self._record(task_loss / scale * parts, anchor_share * parts, task_share * parts, sums.conflict_fraction)
        return (loss, outputs) if return_outputs else loss

    @property
    def _accumulation_steps(self) -> int:
        """Micro-batches in the current optimizer step (set by ``Trainer.train``; the configured value outside it)."""
        return getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)

    def _anchor_rows(self) -> AnchorRows | None:
        """This rank's and micro-batch's share of the step's anchor draw."""
        step = self.state.global_step
        micro = self._micro_step[1] + 1 if self._micro_step[0] == step else 0
        self._micro_step = (step, micro)
        steps = self._accumulation_steps
        if micro >= steps:
            raise RuntimeError(f"more micro-batches than gradient-accumulation steps ({steps}) at step {step}")
        return self.str_objective.anchor_rows(
            step, self.accelerator.process_index * steps + micro, self.accelerator.num_processes * steps
        )

    def _micro_batch_scale(self, num_items_in_batch: Tensor | int | None) -> float:
        """What a share of the step's global mean must be multiplied by to survive the Trainer's reductions.

        Gradients are averaged over processes, and a loss the Trainer does not
        consider normalised for gradient accumulation is divided by its steps.
        """
        scale = self.accelerator.num_processes
        scaled_for_ga = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_for_ga is None:
            scaled_for_ga = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        if not scaled_for_ga:
            scale *= self._accumulation_steps
        return scale

    def _global_label_count(self, positions: Tensor, num_items_in_batch: Tensor | int | None) -> Tensor:
        """Label tokens in the whole optimizer step across processes (``num_items_in_batch`` when it counts them)."""
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            return torch.as_tensor(num_items_in_batch, device=positions.device).clamp(min=1)
        local = positions.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        steps = 1 if num_items_in_batch is not None else self._accumulation_steps
        return (local * steps * self.accelerator.num_processes).to(positions.device).clamp(min=1)

    def _record(self, task: Tensor, str_anchor: Tensor, str_task: Tensor, conflicts: Tensor) -> None:
        values = {
            "task_loss": task,
            "str_anchor": str_anchor,
            "str_task": str_task,
            "str_conflict_fraction": conflicts,
        }
        if not self.str_config.uses_anchors:
            values.pop("str_anchor")
        if not self.str_config.uses_task:
            values.pop("str_task")
            values.pop("str_conflict_fraction")
        for key, value in values.items():
            self._str_metrics[key].append(float(value.detach()))

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of each STR term since the last log (averaged over processes) to the Trainer's logs."""
        if self._str_metrics and "loss" in logs:  # the training log, not eval or a callback's own
            means = torch.tensor([sum(v) / len(v) for v in self._str_metrics.values()], device=self.args.device)
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update({key: round(float(m), 6) for key, m in zip(self._str_metrics, means, strict=True)})
            self._str_metrics.clear()
        super().log(logs, *args, **kwargs)


class STRTrainer(STRTrainerMixin, Trainer):
    """``transformers.Trainer`` with Safety Token Regularization; see :class:`STRTrainerMixin`."""
