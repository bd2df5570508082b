"""A plain PyTorch training loop over chat examples, with optional STR.

Used by the embedded demo (full fine-tuning of the toy models, LoRA
fine-tuning with and without STR). It shows the custom-loop integration:
each step is one call of :func:`logitguard.regularizer.str_loss`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from logitguard.anchors import AnchorCache
from logitguard.data import IGNORE_INDEX, collate, encode_chat
from logitguard.model_parts import final_hidden_states, output_rows
from logitguard.regularizer import AnchorSchedule, STRConfig, TaskLoss, str_loss


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
    task_loss: TaskLoss = "nll"  # "constrained": Qi et al.'s token-wise constrained SFT (a baseline)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.task_loss not in ("nll", "constrained"):
            raise ValueError(f"task_loss must be 'nll' or 'constrained', got {self.task_loss!r}")


StepCallback = Callable[[int, dict[str, float]], None]


@torch.no_grad()
def label_log_probs(
    model: nn.Module, encoded: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int = 32
) -> list[list[float]]:
    """Per example, the model's log-probability of each label token at that token's position (0 elsewhere).

    Computed once before training for token-wise constrained SFT, so no reference model is needed later.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    weight, bias = output_rows(model)
    result = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
        hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])[:, :-1]
        log_probs = torch.nn.functional.linear(hidden, weight, bias).float().log_softmax(-1)
        labels = batch["labels"][:, 1:]
        picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != IGNORE_INDEX)
        for row, example in zip(picked, rows, strict=True):
            result.append([0.0, *row[: len(example["input_ids"]) - 1].tolist()])
    model.train(was_training)
    return result


def train(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[str, str]],
    config: TrainConfig,
    str_config: STRConfig | None = None,
    safety_ids: torch.Tensor | None = None,
    anchors: AnchorCache | None = None,
    on_step: StepCallback | None = None,
    desc: str = "training",
) -> list[dict[str, float]]:
    """Fine-tune the trainable parameters of ``model`` on (prompt, response) pairs.

    Returns one log dict per step: every loss term, the learning rate and the
    step's wall time. ``on_step(step, logs)`` runs after each optimizer step.
    """
    if not examples:
        raise ValueError("no training examples")
    if str_config is not None:
        if safety_ids is None:
            raise ValueError("STR needs the safety-token ids")
        if str_config.uses_anchors and anchors is None:
            raise ValueError("STR with reference 'anchors' needs an anchor cache")
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    encoded = [encode_chat(tokenizer, p, r) for p, r in examples]
    if config.task_loss == "constrained":  # the model before any update is the aligned reference
        for example, log_probs in zip(encoded, label_log_probs(model, encoded, tokenizer.pad_token_id), strict=True):
            example["ref_log_probs"] = log_probs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    schedule = (
        AnchorSchedule(len(anchors), str_config.anchors_per_step, str_config.anchor_every, config.seed)
        if str_config is not None and str_config.uses_anchors
        else None
    )
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
        anchor_rows = anchors.rows(schedule.rows(step - 1)) if schedule and schedule.active(step - 1) else None
        terms = str_loss(model, batch, safety_ids, str_config, anchor_rows, task_loss=config.task_loss)
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
