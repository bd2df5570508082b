"""The small training loop that builds the toy models: plain next-token SFT on (prompt, response) pairs.

It knows nothing of STR (the demo and the benchmarks fine-tune through ``STRTrainer``, as users do), so the toy
models' cache key hashes only this loop, the corpus, the model recipe and the chat encoding.
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

from logitguard.data.chat import IGNORE_INDEX, collate, encode_chat
from logitguard.errors import LogitGuardError


def sft_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over the label positions of ``batch`` (``(B, L)`` tensors, labels -100 off)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX)


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
    on_step: StepCallback | None = None,
    desc: str = "training",
) -> list[dict[str, float]]:
    """Train the trainable parameters of ``model`` on (prompt, response) pairs with the next-token loss.

    Returns one log dict per step: the loss, the learning rate and the step's wall time.
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
        loss = sft_loss(model, batch)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{desc}: loss became {loss_value} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logs = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]}
        logs["step_time"] = time.perf_counter() - start
        history.append(logs)
        if on_step is not None:
            on_step(step, logs)
    model.eval()
    return history
