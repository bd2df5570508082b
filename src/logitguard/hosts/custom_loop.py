"""STR in a plain PyTorch training loop: :func:`str_loss` for your own loop.

``str_loss`` is the custom-loop host of :class:`~logitguard.core.objective.STRObjective`: one forward pass of the
model over the task rows and this micro-batch's share of the step's anchor sequences (packed after them, by
default), the task cross-entropy at label positions only, and the STR terms, each normalised to its share of the
step's mean. With gradient accumulation, call it once per micro-batch with ``micro_batch``/``micro_batches`` and the
step's label count, and backpropagate each loss: the summed gradients equal one big batch's. Under
``torch.distributed`` (DDP, FSDP) each process takes its own share of the anchors and its loss is scaled so that
the averaged gradients do too.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logitguard.core.model_access import captured_hidden_states, head_on_first_rows, unwrap_parallel
from logitguard.core.objective import STRObjective
from logitguard.core.schedule import StepShare
from logitguard.core.step import loop_reductions
from logitguard.data.chat import IGNORE_INDEX
from logitguard.hosts.trainer import NonFiniteLoss


@dataclass
class LossTerms:
    """The loss to backpropagate and each of its terms (detached, for logging), as this micro-batch's share: over
    a step's micro-batches they add up to the step's value (on each process; average them over processes)."""

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
    micro_batch: int = 0,
    micro_batches: int = 1,
) -> LossTerms:
    """Task cross-entropy plus λ·STR for one micro-batch in one forward pass (plain SFT when ``objective`` is None).

    Every term is this micro-batch's share of the step's mean: the task loss and the task-reference term are sums
    over label positions divided by the step's label count, the anchor terms sums over this share's anchor positions
    divided by the step's. Under ``torch.distributed`` the loss is multiplied by the number of processes, whose
    gradients DDP and FSDP average. A term that is NaN or infinite raises
    :class:`~logitguard.hosts.trainer.NonFiniteLoss` naming it (one host synchronisation). The artifacts are
    checked against the model on the first call.

    Args:
        model: the model being trained (a PEFT model for the task reference; a DDP wrapper is fine).
        batch: ``input_ids``/``attention_mask``/``labels``, each ``(B, L)``; labels ``-100`` off the response.
        objective: the STR objective (settings, safety tokens, anchors and their schedule).
        step: the 0-based optimizer step (it picks the anchor rows).
        num_items_in_batch: label tokens in the whole step: every micro-batch, on every process. Default: this
            batch's count times micro-batches and processes.
        micro_batch, micro_batches: this micro-batch's index among the step's gradient-accumulation micro-batches
            (it takes its part of the step's anchors).
    """
    share = StepShare.of_process(micro_batch, micro_batches)
    labels = batch["labels"]
    reductions = loop_reductions(share, labels, num_items_in_batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    plan, head = None, nullcontext()
    if objective is not None:
        plan = objective.plan(batch, step, share)
        inputs = {key: value for key, value in plan.inputs.model_inputs().items() if key != "labels"}
        if plan.inputs.extra_rows:
            head = head_on_first_rows(model, plan.inputs.task_rows)  # no logits for the packed anchor rows
    with captured_hidden_states(model) as hidden, head:
        logits = model(**inputs, use_cache=False).logits
    positions = labels[:, 1:] != IGNORE_INDEX
    task_logits = logits[:, : labels.shape[1] - 1][positions]
    task = reductions.share(F.cross_entropy(task_logits.float(), labels[:, 1:][positions], reduction="sum"))
    zero = torch.zeros((), device=logits.device)
    if objective is None:
        return _checked(LossTerms(task, task.detach(), zero, zero, zero, zero), step)
    terms = objective.terms(unwrap_parallel(model), hidden[0], batch, plan, reductions.step_labels)
    loss = task + reductions.factor * terms.penalty
    scaled = (t.detach() * reductions.factor for t in (terms.anchor, terms.benign, terms.task))
    return _checked(LossTerms(loss, task.detach(), *scaled, terms.conflict_fraction.detach()), step)


def _checked(terms: LossTerms, step: int) -> LossTerms:
    values = {"task_loss": terms.task, "str_anchor": terms.str_anchor, "str_benign": terms.str_benign}
    values["str_task"] = terms.str_task
    finite = torch.isfinite(torch.stack(list(values.values())).float()).tolist()
    for (name, value), ok in zip(values.items(), finite, strict=True):
        if not ok:
            raise NonFiniteLoss(f"step {step}: {name} became {float(value)}; stop before the optimizer step")
    return terms
