"""How a host turns a forward pass's share of a step's mean into the loss it backpropagates.

A loss normalised over a whole optimizer step (a sum over this micro-batch's positions divided by the step's count,
on every process) must be multiplied by what the host later divides it by: the number of processes whose gradients
are averaged, and the gradient-accumulation steps when the host divides each micro-batch's loss by them. Then the
step's update equals one big batch's, however the step is split. :func:`trainer_reductions` reads this off a
``transformers.Trainer`` (both ``compute_loss`` overrides, STR's and the constrained-SFT peer's, use it);
:func:`loop_reductions` is a custom loop's (gradients summed over micro-batches, averaged over processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from logitguard.core.schedule import StepShare
from logitguard.data.chat import IGNORE_INDEX


@dataclass(frozen=True)
class LossReductions:
    """What a host does to a forward pass's loss, and the step's label count.

    Attributes:
        factor: multiply a share of the step's mean by this to undo the host's divisions (processes, and
            gradient-accumulation steps where the host divides by them).
        step_labels: scalar, label tokens in the whole step (every micro-batch and process): the denominator of
            every loss summed over label positions.
    """

    factor: float
    step_labels: Tensor

    def share(self, total: Tensor) -> Tensor:
        """``total``, summed over this pass's label positions, as what the host should backpropagate."""
        return total / self.step_labels.to(total.device).clamp(min=1) * self.factor


def trainer_reductions(trainer: Any, labels: Tensor, num_items_in_batch: Tensor | int | None) -> LossReductions:
    """What ``transformers.Trainer`` (5.x) does to ``compute_loss``'s loss for the micro-batch with ``labels``
    ``(B, L)``.

    * ``training_step`` divides the loss by the accumulation steps unless it counts as scaled for them
      (``loss_is_scaled_for_ga``, else: normalised by ``num_items_in_batch``, or a ``compute_loss_func``).
    * The gradients of ``num_processes`` processes are averaged.
    * ``num_items_in_batch`` counts the label tokens of every micro-batch of the step, and of every process with
      ``average_tokens_across_devices``; without it, the step's count is this micro-batch's times both numbers.
    """
    processes = trainer.accelerator.num_processes
    steps = getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps)
    scaled = getattr(trainer, "loss_is_scaled_for_ga", None)
    if scaled is None:
        scaled = (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            trainer.compute_loss_func is not None
        )
    local = (labels[:, 1:] != IGNORE_INDEX).sum()
    if num_items_in_batch is None:
        step_labels = local * steps * processes
    elif trainer.args.average_tokens_across_devices:
        step_labels = torch.as_tensor(num_items_in_batch)
    else:
        step_labels = torch.as_tensor(num_items_in_batch) * processes
    return LossReductions(float(processes * (1 if scaled else steps)), step_labels.to(labels.device))


def loop_reductions(share: StepShare, labels: Tensor, num_items_in_batch: Tensor | int | None) -> LossReductions:
    """A custom loop's: micro-batch losses summed into one backward, gradients averaged over ``share.world``
    processes; ``num_items_in_batch`` counts the label tokens of the whole step on every process (default: this
    micro-batch's times the step's shares)."""
    local = (labels[:, 1:] != IGNORE_INDEX).sum()
    step_labels = local * share.parts if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
    return LossReductions(float(share.world), step_labels.to(labels.device))
