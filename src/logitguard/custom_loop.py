"""STR in a plain PyTorch training loop: :func:`str_loss` for your own loop, and :func:`train`, a small loop.

``str_loss`` is the custom-loop host of :class:`~logitguard.regularizer.STRObjective`: one decoder pass over
the task rows (and the anchor rows, when they share it), the task cross-entropy at label positions only, and
the STR terms normalised per batch. ``train`` builds the toy models; the demo and the benchmarks train through
:class:`~logitguard.str_trainer.STRTrainer`, as users do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from logitguard.data import IGNORE_INDEX, collate, encode_chat
from logitguard.errors import LogitGuardError
from logitguard.model_parts import final_hidden_states, output_rows
from logitguard.regularizer import STRObjective


@dataclass
class LossTerms:
    """The objective and each of its terms (terms detached, for logging)."""

    loss: Tensor
    task: Tensor
    str_anchor: Tensor
    str_task: Tensor
    conflict_fraction: Tensor

    def logs(self) -> dict[str, float]:
        return {
            "loss": float(self.loss.detach()),
            "task_loss": float(self.task),
            "str_anchor": float(self.str_anchor),
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
    """Task cross-entropy plus λ·STR for one batch in one decoder pass (plain SFT when ``objective`` is None).

    The anchor term is the mean over the step's anchor target positions; the task-reference term, like the task
    loss, a sum over label positions (conflicts count 0) divided by the label count.

    Args:
        model: the model being trained (a PEFT model for the task reference).
        batch: ``input_ids``/``attention_mask``/``labels``, each ``(B, L)``; labels ``-100`` off the response.
        objective: the STR objective (settings, safety tokens, anchors and their schedule).
        step: the 0-based optimizer step (it picks the anchor rows).
        num_items_in_batch: label tokens across the whole accumulated batch; the task loss is its
            sum divided by this (exact gradient accumulation). Defaults to this batch's label count.
    """
    rows = objective.anchor_rows(step) if objective is not None else None
    if objective is not None:
        inputs = objective.forward_inputs(batch, rows)
        input_ids, attention_mask, shared = inputs.input_ids, inputs.attention_mask, inputs.shared
    else:
        input_ids, attention_mask, shared = batch["input_ids"], batch["attention_mask"], False
    hidden = final_hidden_states(model, input_ids, attention_mask)
    labels = batch["labels"]
    positions = labels[:, 1:] != IGNORE_INDEX
    h_sel = hidden[: labels.shape[0], : labels.shape[1] - 1][positions]
    weight, bias = output_rows(model)
    denominator = positions.sum() if num_items_in_batch is None else num_items_in_batch
    denominator = torch.as_tensor(denominator, device=hidden.device).clamp(min=1)
    task = F.cross_entropy(F.linear(h_sel, weight, bias).float(), labels[:, 1:][positions], reduction="sum")
    task = task / denominator
    if objective is None:
        zero = torch.zeros((), device=hidden.device)
        return LossTerms(task, task.detach(), zero, zero, zero)
    sums = objective.penalties(model, hidden, batch, rows, shared)
    str_anchor = sums.anchor / rows.step_positions if rows is not None else sums.anchor
    str_task = sums.task / denominator
    loss = task + objective.config.weight * (str_anchor + str_task)
    return LossTerms(loss, task.detach(), str_anchor.detach(), str_task.detach(), sums.conflict_fraction.detach())


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train`."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise LogitGuardError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise LogitGuardError(f"lr must be > 0, got {self.lr}")


StepCallback = Callable[[int, dict[str, float]], None]


def train(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[str, str]],
    config: TrainConfig,
    objective: STRObjective | None = None,
    on_step: StepCallback | None = None,
    desc: str = "training",
) -> list[dict[str, float]]:
    """Fine-tune the trainable parameters of ``model`` on (prompt, response) pairs, with STR when given.

    Returns one log dict per step: every loss term, the learning rate and the step's wall time.
    ``on_step(step, logs)`` runs after each optimizer step.
    """
    if not examples:
        raise LogitGuardError("no training examples")
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    encoded = [encode_chat(tokenizer, p, r) for p, r in examples]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(encoded), generator=generator)
    cursor = 0
    history = []
    model.train()
    for step in tqdm(range(1, config.steps + 1), desc=desc, leave=False):
        start = time.perf_counter()
        if cursor + config.batch_size > len(order):
            order, cursor = torch.randperm(len(encoded), generator=generator), 0
        rows = order[cursor : cursor + config.batch_size].tolist()
        cursor += config.batch_size
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows], tokenizer.pad_token_id).items()}
        terms = str_loss(model, batch, objective, step - 1)
        loss_value = float(terms.loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{desc}: loss became {loss_value} at step {step}")
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logs = {"step": step, **terms.logs(), "lr": scheduler.get_last_lr()[0]}
        logs["step_time"] = time.perf_counter() - start
        history.append(logs)
        if on_step is not None:
            on_step(step, logs)
    model.eval()
    return history
