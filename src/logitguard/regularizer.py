"""STR for a training step: task loss + λ·penalty on the safety-token logits.

A thin adapter between a (PEFT) causal LM and the pure penalties. One call of
:func:`str_loss` runs the decoder once over the task batch *and* the anchor
rows (anchors share the forward pass), computes the task cross-entropy only at
label positions, and the safety-token logits as ``hidden @ W_out[ids].T``.

Two references:

* ``"anchors"``: harmful prompts with the aligned model's refusals, reference
  logits cached before training (:mod:`logitguard.anchors`);
* ``"task"``: the task batch itself, the reference being the same PEFT model
  with its adapters disabled. Positions where that reference would rather
  emit a safety token than the data's own next token are *conflicts* (the
  aligned model refuses what the task asks for); they are left out, since
  pinning them would block the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logitguard.anchors import AnchorCache
from logitguard.data import IGNORE_INDEX
from logitguard.model_parts import final_hidden_states, output_rows, reference_mode
from logitguard.penalties import Penalty, get_penalty, salient_kl, salient_log_probs, salient_logits

Reference = Literal["anchors", "task", "both"]


@dataclass
class STRConfig:
    """Settings of Safety Token Regularization.

    Attributes:
        penalty: ``"mse"`` (squared logit deviation) or ``"kl"`` (KL restricted to the safety tokens).
        weight: λ, the penalty's weight in ``loss = task + λ·STR``.
        reference: ``"anchors"``, ``"task"`` or ``"both"``.
        anchors_per_step: anchor rows added to each step's forward pass.
        temperature: softmax temperature of the ``"kl"`` penalty.
        mask_conflicts: leave out task positions the reference would refuse (task reference only).
        rest_bucket: on anchors, compare full-vocabulary log-probabilities of the k tokens plus one bucket
            for all others (:func:`~logitguard.penalties.salient_log_probs`) instead of raw logits. It
            needs the log-normaliser at the anchor positions only (a few hundred rows of logits).
    """

    penalty: str = "mse"
    weight: float = 1.0
    reference: Reference = "anchors"
    anchors_per_step: int = 8
    temperature: float = 1.0
    mask_conflicts: bool = True
    rest_bucket: bool = True

    def __post_init__(self) -> None:
        get_penalty(self.penalty)
        if not self.weight >= 0:
            raise ValueError(f"STR weight (lambda) must be >= 0, got {self.weight}")
        if self.reference not in ("anchors", "task", "both"):
            raise ValueError(f"reference must be 'anchors', 'task' or 'both', got {self.reference!r}")
        if self.anchors_per_step <= 0:
            raise ValueError(f"anchors_per_step must be > 0, got {self.anchors_per_step}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def penalty_fn(self) -> Penalty:
        if self.penalty == "kl":
            return partial(salient_kl, temperature=self.temperature)
        return get_penalty(self.penalty)

    @property
    def uses_anchors(self) -> bool:
        return self.reference in ("anchors", "both")

    @property
    def uses_task(self) -> bool:
        return self.reference in ("task", "both")


@dataclass
class AnchorSampler:
    """Cycles through the anchor rows in a seeded random order, ``n`` rows at a time."""

    cache: AnchorCache
    n: int
    seed: int = 0
    _order: Tensor = field(init=False, repr=False)
    _cursor: int = field(init=False, default=0)
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)
        self._order = torch.randperm(len(self.cache), generator=self._generator)

    def next(self) -> dict[str, Tensor]:
        index = []
        while len(index) < self.n:
            if self._cursor == len(self._order):
                self._order, self._cursor = torch.randperm(len(self.cache), generator=self._generator), 0
            take = self._order[self._cursor : self._cursor + self.n - len(index)]
            self._cursor += len(take)
            index.extend(take.tolist())
        return self.cache.rows(torch.tensor(index))


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


def _pad_to(t: Tensor, length: int, value: float) -> Tensor:
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]), value=value)


def refusal_conflicts(ref_salient: Tensor, ref_label_logit: Tensor, labels: Tensor, ids: Tensor) -> Tensor:
    """``(n,)`` True where the reference prefers some safety token over the data's next token.

    Args:
        ref_salient: ``(n, k)`` reference safety-token logits at the selected positions.
        ref_label_logit: ``(n,)`` reference logit of the label token there.
        labels: ``(n,)`` the label token ids.
        ids: ``(k,)`` safety-token ids; a label that is itself a safety token is no conflict.
    """
    is_safety_label = (labels.unsqueeze(-1) == ids.to(labels.device)).any(-1)
    return (ref_salient.max(-1).values > ref_label_logit) & ~is_safety_label


def str_loss(
    model: nn.Module,
    batch: dict[str, Tensor],
    safety_ids: Tensor,
    config: STRConfig | None,
    anchors: dict[str, Tensor] | None = None,
    num_items_in_batch: int | Tensor | None = None,
) -> LossTerms:
    """Task cross-entropy plus λ·STR for one batch, in one decoder pass (plain SFT when ``config`` is None).

    Args:
        model: the model being trained (a PEFT model for the task reference).
        batch: ``input_ids``/``attention_mask``/``labels``, each ``(B, L)``; labels ``-100`` off the response.
        safety_ids: ``(k,)`` safety-token ids.
        config: STR settings.
        anchors: anchor rows (from :class:`AnchorSampler`); required when ``config.uses_anchors``.
        num_items_in_batch: label tokens across the whole accumulated batch; the task loss is its
            sum divided by this (exact gradient accumulation). Defaults to this batch's label count.
    """
    use_anchors = config is not None and config.uses_anchors
    use_task = config is not None and config.uses_task
    if use_anchors and anchors is None:
        raise ValueError("STR with reference 'anchors' needs anchor rows for every step")
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n_task, length = input_ids.shape
    device = input_ids.device
    zero = torch.zeros((), device=device)

    if use_anchors:
        anchors = {key: value.to(device) for key, value in anchors.items()}
        length = max(length, anchors["input_ids"].shape[1])
        input_ids = torch.cat([_pad_to(input_ids, length, 0), _pad_to(anchors["input_ids"], length, 0)])
        attention_mask = torch.cat([_pad_to(attention_mask, length, 0), _pad_to(anchors["attention_mask"], length, 0)])
    hidden = final_hidden_states(model, input_ids, attention_mask)
    task_hidden = hidden[:n_task, : labels.shape[1]]

    weight, bias = output_rows(model)
    positions = labels[:, 1:] != IGNORE_INDEX
    h_sel, y_sel = task_hidden[:, :-1][positions], labels[:, 1:][positions]
    logits = F.linear(h_sel, weight, bias).float()
    denominator = positions.sum() if num_items_in_batch is None else num_items_in_batch
    task = F.cross_entropy(logits, y_sel, reduction="sum") / torch.as_tensor(denominator, device=device).clamp(min=1)

    str_anchor = str_task = conflict_fraction = zero
    if not (use_anchors or use_task):
        return LossTerms(task, task.detach(), zero, zero, zero)
    penalty = config.penalty_fn()
    ids = safety_ids.to(device)
    w_ids, b_ids = output_rows(model, ids)
    if use_anchors:
        a = anchors
        target = a["target_mask"]
        h_target = hidden[n_task:, : target.shape[1]][target]
        current, reference = salient_logits(h_target, w_ids, b_ids), a["ref_logits"][target]
        if config.rest_bucket:
            normaliser = F.linear(h_target, weight, bias).float().logsumexp(-1)
            current = salient_log_probs(current, normaliser)
            reference = salient_log_probs(reference, a["ref_logsumexp"][target])
        str_anchor = penalty(current, reference, torch.ones(len(h_target), dtype=torch.bool, device=device))
    if use_task:
        with reference_mode(model):
            ref_hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])[:, :-1][positions]
            ref_salient = salient_logits(ref_hidden, w_ids, b_ids)
            keep = torch.ones_like(y_sel, dtype=torch.bool)
            if config.mask_conflicts:
                ref_label = (ref_hidden * weight[y_sel]).sum(-1) + (0 if bias is None else bias[y_sel])
                conflicts = refusal_conflicts(ref_salient, ref_label, y_sel, ids)
                keep = ~conflicts
                conflict_fraction = conflicts.float().mean() if conflicts.numel() else zero
        str_task = penalty(salient_logits(h_sel, w_ids, b_ids), ref_salient, keep)

    loss = task + config.weight * (str_anchor + str_task)
    return LossTerms(loss, task.detach(), str_anchor.detach(), str_task.detach(), conflict_fraction.detach())
