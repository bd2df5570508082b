"""STR in a plain PyTorch training loop: :func:`str_loss` for your own loop.

``str_loss`` is the custom-loop host of :class:`~logitguard.core.objective.STRObjective`: one forward pass of the
model over the task rows and the step's anchor sequences (packed after them, by default), the task cross-entropy
at label positions only, and the STR terms normalised per batch. The demo and the benchmarks train through
:class:`~logitguard.hosts.trainer.STRTrainer`, as most users do.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logitguard.core.model_access import captured_hidden_states, head_on_first_rows, unwrap_parallel
from logitguard.core.objective import STRObjective
from logitguard.data.chat import IGNORE_INDEX
from logitguard.hosts.trainer import NonFiniteLoss


@dataclass
class LossTerms:
    """The objective and each of its terms (terms detached, for logging)."""

    loss: Tensor
    task: Tensor
    str_anchor: Tensor
    str_benign: Tensor
    str_task: Tensor
    conflict_fraction: Tensor

    def logs(self) -> dict[str, float]:
        return {
            "loss": float(self.loss.detach()),
            "task_loss": float(self.task),
            "str_anchor": float(self.str_anchor),
            "str_benign": float(self.str_benign),
            "str_task": float(self.str_task),
            "str_conflict_fraction": float(self.conflict_fraction),
        }


def str_loss(
    model: nn.Module,
    batch: dict[str, Tensor],
    objective: STRObjective | None,
    step: int = 0,
    num_items_in_batch: int | Tensor | None = None,
) -> LossTerms:
    """Task cross-entropy plus λ·STR for one batch in one forward pass (plain SFT when ``objective`` is None).

    The anchor terms are means over the step's anchor target positions; the task-reference term, like the task
    loss, a sum over label positions (conflicts count 0) divided by the label count. A term that is NaN or
    infinite raises :class:`~logitguard.hosts.trainer.NonFiniteLoss` naming it (one host synchronisation).

    Args:
        model: the model being trained (a PEFT model for the task reference; a DDP wrapper is fine).
        batch: ``input_ids``/``attention_mask``/``labels``, each ``(B, L)``; labels ``-100`` off the response.
        objective: the STR objective (settings, safety tokens, anchors and their schedule).
        step: the 0-based optimizer step (it picks the anchor rows).
        num_items_in_batch: label tokens across the whole accumulated batch; the task loss is its
            sum divided by this (exact gradient accumulation). Defaults to this batch's label count.
    """
    rows = objective.anchor_rows(step) if objective is not None else None
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    forward, head = None, nullcontext()
    if objective is not None:
        forward = objective.forward_inputs(batch, rows)
        inputs = {key: value for key, value in forward.model_inputs().items() if key != "labels"}
        if forward.extra_rows:
            head = head_on_first_rows(model, forward.task_rows)  # no logits for the packed anchor rows
    with captured_hidden_states(model) as hidden, head:
        logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"]
    positions = labels[:, 1:] != IGNORE_INDEX
    denominator = positions.sum() if num_items_in_batch is None else num_items_in_batch
    denominator = torch.as_tensor(denominator, device=logits.device).clamp(min=1)
    task_logits = logits[:, : labels.shape[1] - 1][positions]
    task = F.cross_entropy(task_logits.float(), labels[:, 1:][positions], reduction="sum") / denominator
    zero = torch.zeros((), device=logits.device)
    if objective is None:
        return _checked(LossTerms(task, task.detach(), zero, zero, zero, zero), step)
    sums = objective.penalties(unwrap_parallel(model), hidden[0], batch, forward)
    str_anchor = sums.anchor / rows.step_positions if rows is not None else sums.anchor
    str_benign = sums.benign / rows.benign_step_positions if rows is not None else sums.benign
    str_task = sums.task / denominator
    loss = task + objective.config.weight * (str_anchor + str_benign + str_task)
    terms = (str_anchor, str_benign, str_task, sums.conflict_fraction)
    return _checked(LossTerms(loss, task.detach(), *(t.detach() for t in terms)), step)


def _checked(terms: LossTerms, step: int) -> LossTerms:
    values = {"task_loss": terms.task, "str_anchor": terms.str_anchor, "str_benign": terms.str_benign}
    values["str_task"] = terms.str_task
    finite = torch.isfinite(torch.stack(list(values.values())).float()).tolist()
    for (name, value), ok in zip(values.items(), finite, strict=True):
        if not ok:
            raise NonFiniteLoss(f"step {step}: {name} became {float(value)}; stop before the optimizer step")
    return terms
