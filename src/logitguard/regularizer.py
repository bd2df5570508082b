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

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logitguard.baselines import constrained_nll, response_betas
from logitguard.data import IGNORE_INDEX
from logitguard.model_parts import final_hidden_states, output_rows, reference_mode
from logitguard.penalties import Penalty, Reduction, get_penalty, salient_kl, salient_log_probs, salient_logits

Reference = Literal["anchors", "task", "both"]
TaskLoss = Literal["nll", "constrained"]


@dataclass
class STRConfig:
    """Settings of Safety Token Regularization.

    Attributes:
        penalty: ``"kl"`` (KL restricted to the safety tokens) or ``"mse"`` (squared logit deviation).
        weight: λ, the penalty's weight in ``loss = task + λ·STR``. The defaults (kl, λ=0.3) come from
            README's settings table: mse and larger λ cost task accuracy for no refusals gained.
        reference: ``"anchors"``, ``"task"`` or ``"both"``.
        anchors_per_step: anchor rows per optimizer step, shared out over ranks and gradient-accumulation
            micro-batches (each step's anchor term is the mean over all of them).
        anchor_every: anchors run on every ``anchor_every``-th optimizer step only (cheaper, weaker).
        anchor_pass: ``"shared"`` puts anchor rows in the task batch's forward pass (padded to its length),
            ``"separate"`` runs them in a short forward of their own; ``"auto"`` shares the pass unless the
            task rows are more than twice as long as the anchors (padding would then cost more than the
            anchors themselves). At tiny scale a second forward costs nearly a whole step; at real
            sequence lengths padding 8 anchors to 2k tokens would.
        temperature: softmax temperature of the ``"kl"`` penalty.
        mask_conflicts: leave out task positions the reference would refuse (task reference only).
        rest_bucket: on anchors, compare full-vocabulary log-probabilities of the k tokens plus one bucket
            for all others (:func:`~logitguard.penalties.salient_log_probs`) instead of raw logits. It
            needs the log-normaliser at the anchor positions only (a few hundred rows of logits).
    """

    penalty: str = "kl"
    weight: float = 0.3
    reference: Reference = "anchors"
    anchors_per_step: int = 8
    anchor_every: int = 1
    anchor_pass: Literal["auto", "shared", "separate"] = "auto"
    temperature: float = 1.0
    mask_conflicts: bool = True
    rest_bucket: bool = True

    def __post_init__(self) -> None:
        get_penalty(self.penalty)
        if not self.weight >= 0:
            raise ValueError(f"STR weight (lambda) must be >= 0, got {self.weight}")
        if self.reference not in ("anchors", "task", "both"):
            raise ValueError(f"reference must be 'anchors', 'task' or 'both', got {self.reference!r}")
        for name in ("anchors_per_step", "anchor_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.anchor_pass not in ("auto", "shared", "separate"):
            raise ValueError(f"anchor_pass must be 'auto', 'shared' or 'separate', got {self.anchor_pass!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def penalty_fn(self) -> Penalty:
        if self.penalty == "kl":
            return partial(salient_kl, temperature=self.temperature)
        return get_penalty(self.penalty)

    def shares_anchor_pass(self, task_length: int, anchor_length: int) -> bool:
        """Whether anchor rows join the task rows' forward pass (see ``anchor_pass``)."""
        if self.anchor_pass == "auto":
            return task_length <= 2 * anchor_length
        return self.anchor_pass == "shared"

    @property
    def uses_anchors(self) -> bool:
        return self.reference in ("anchors", "both")

    @property
    def uses_task(self) -> bool:
        return self.reference in ("task", "both")


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass(frozen=True)
class AnchorSchedule:
    """Which anchor rows each optimizer step uses: seeded shuffles of the cache, ``per_step`` rows at a time.

    The draw is a pure function of the step, so a resumed run and every rank of a
    distributed run agree on it without saving or communicating any state; each
    rank and gradient-accumulation micro-batch then takes its own :func:`shard`.
    """

    n_rows: int
    per_step: int
    every: int = 1
    seed: int = 0

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) has anchor rows."""
        return step % self.every == 0

    def rows(self, step: int) -> Tensor:
        """``(per_step,)`` row indices of the global draw for an active step."""
        positions = torch.arange(step // self.every * self.per_step, (step // self.every + 1) * self.per_step)
        epochs, offsets = positions // self.n_rows, positions % self.n_rows
        return torch.stack(
            [_permutation(self.n_rows, self.seed, int(e))[o] for e, o in zip(epochs, offsets, strict=True)]
        )


def shard(rows: Tensor, index: int, count: int) -> Tensor:
    """The ``index``-th of ``count`` near-equal contiguous parts of ``rows``."""
    return torch.tensor_split(rows, count)[index]


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


def anchor_penalty(
    model: nn.Module,
    hidden: Tensor,
    anchors: dict[str, Tensor],
    ids: Tensor,
    config: STRConfig,
    reduction: Reduction = "mean",
) -> Tensor:
    """STR on anchor rows: the model's safety-token logits at refusal positions against the cached reference.

    Args:
        model: the model being trained (its output embedding gives ``W_out[ids]``).
        hidden: ``(n, L', d)`` final hidden states of the anchor rows, ``L' >= L``.
        anchors: rows of an :class:`~logitguard.anchors.AnchorCache` (``target_mask`` ``(n, L)``,
            ``ref_logits`` ``(n, L, k)``, ``ref_logsumexp`` ``(n, L)``), on ``hidden``'s device.
        ids: ``(k,)`` safety-token ids.
        reduction: ``"mean"`` over target positions, or ``"sum"`` for callers normalising globally.
    """
    target = anchors["target_mask"]
    h_target = hidden[:, : target.shape[1]][target]
    w_ids, b_ids = output_rows(model, ids)
    current, reference = salient_logits(h_target, w_ids, b_ids), anchors["ref_logits"][target]
    if config.rest_bucket:
        weight, bias = output_rows(model)
        current = salient_log_probs(current, F.linear(h_target, weight, bias).float().logsumexp(-1))
        reference = salient_log_probs(reference, anchors["ref_logsumexp"][target])
    keep = torch.ones(len(h_target), dtype=torch.bool, device=hidden.device)
    return config.penalty_fn()(current, reference, keep, reduction=reduction)


def task_penalty(
    model: nn.Module,
    batch: dict[str, Tensor],
    h_sel: Tensor,
    positions: Tensor,
    ids: Tensor,
    config: STRConfig,
    reduction: Reduction = "mean",
) -> tuple[Tensor, Tensor]:
    """STR on the task batch against the same PEFT model with its adapters disabled.

    Args:
        model: the PEFT model being trained (not a DDP/FSDP wrapper: its adapters are switched off).
        batch: ``input_ids``/``attention_mask``/``labels`` ``(B, L)`` of the task rows.
        h_sel: ``(n, d)`` the model's final hidden states at the selected positions.
        positions: ``(B, L - 1)`` bool, the positions (predicting ``labels[:, 1:]``) that ``h_sel`` holds.
        ids: ``(k,)`` safety-token ids.
        reduction: ``"mean"`` over kept positions, or ``"sum"``.

    Returns:
        The penalty and the fraction of positions left out as refusal conflicts.
    """
    y_sel = batch["labels"][:, 1:][positions]
    w_ids, b_ids = output_rows(model, ids)
    conflict_fraction = torch.zeros((), device=h_sel.device)
    attention_mask = batch.get("attention_mask")
    with reference_mode(model):
        ref_hidden = final_hidden_states(model, batch["input_ids"], attention_mask)[:, :-1][positions]
        ref_salient = salient_logits(ref_hidden, w_ids, b_ids)
        keep = torch.ones_like(y_sel, dtype=torch.bool)
        if config.mask_conflicts and y_sel.numel():
            weight, bias = output_rows(model)
            ref_label = (ref_hidden * weight[y_sel]).sum(-1) + (0 if bias is None else bias[y_sel])
            conflicts = refusal_conflicts(ref_salient, ref_label, y_sel, ids)
            keep = ~conflicts
            conflict_fraction = conflicts.float().mean()
    penalty = config.penalty_fn()(salient_logits(h_sel, w_ids, b_ids), ref_salient, keep, reduction=reduction)
    return penalty, conflict_fraction


def str_loss(
    model: nn.Module,
    batch: dict[str, Tensor],
    safety_ids: Tensor,
    config: STRConfig | None,
    anchors: dict[str, Tensor] | None = None,
    num_items_in_batch: int | Tensor | None = None,
    task_loss: TaskLoss = "nll",
) -> LossTerms:
    """Task cross-entropy plus λ·STR for one batch, in one decoder pass (plain SFT when ``config`` is None).

    The function for custom training loops. Anchor rows join the task rows in
    the same forward pass. The anchor term is a mean over anchor target positions;
    the task-reference term, like the task loss, a sum over label positions
    (conflicts count 0) divided by the label count.

    Args:
        model: the model being trained (a PEFT model for the task reference).
        batch: ``input_ids``/``attention_mask``/``labels``, each ``(B, L)``; labels ``-100`` off the response.
        safety_ids: ``(k,)`` safety-token ids.
        config: STR settings.
        anchors: anchor rows (``AnchorCache.rows``); required when ``config.uses_anchors``.
        num_items_in_batch: label tokens across the whole accumulated batch; the task loss is its
            sum divided by this (exact gradient accumulation). Defaults to this batch's label count.
        task_loss: ``"nll"``, or ``"constrained"``: Qi et al.'s token-wise constrained SFT
            (:func:`~logitguard.baselines.constrained_nll`), which needs ``batch["ref_log_probs"]`` ``(B, L)``,
            the aligned model's log-probability of each label token at that token's position.
    """
    use_anchors = config is not None and config.uses_anchors and anchors is not None
    use_task = config is not None and config.uses_task
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n_task = input_ids.shape[0]
    device = input_ids.device
    zero = torch.zeros((), device=device)

    shared = False
    if use_anchors:
        anchors = {key: value.to(device) for key, value in anchors.items()}
        shared = config.shares_anchor_pass(input_ids.shape[1], anchors["input_ids"].shape[1])
        if shared:
            input_ids, attention_mask = with_anchor_rows(input_ids, attention_mask, anchors)
    hidden = final_hidden_states(model, input_ids, attention_mask)
    task_hidden = hidden[:n_task, : labels.shape[1]]

    weight, bias = output_rows(model)
    positions = labels[:, 1:] != IGNORE_INDEX
    h_sel, y_sel = task_hidden[:, :-1][positions], labels[:, 1:][positions]
    logits = F.linear(h_sel, weight, bias).float()
    denominator = positions.sum() if num_items_in_batch is None else num_items_in_batch
    denominator = torch.as_tensor(denominator, device=device).clamp(min=1)
    if task_loss == "constrained":
        log_probs = logits.log_softmax(-1).gather(-1, y_sel.unsqueeze(-1)).squeeze(-1)
        offsets = (positions.cumsum(1) - 1)[positions]  # position of each label token within its row's response
        ref = batch["ref_log_probs"][:, 1:][positions]
        task = constrained_nll(log_probs, ref, response_betas(offsets), torch.ones_like(y_sel, dtype=torch.bool), "sum")
        task = task / denominator
    elif task_loss == "nll":
        task = F.cross_entropy(logits, y_sel, reduction="sum") / denominator
    else:
        raise ValueError(f"task_loss must be 'nll' or 'constrained', got {task_loss!r}")

    str_anchor = str_task = conflict_fraction = zero
    if use_anchors:
        anchor_hidden = (
            hidden[n_task:] if shared else final_hidden_states(model, anchors["input_ids"], anchors["attention_mask"])
        )
        str_anchor = anchor_penalty(model, anchor_hidden, anchors, safety_ids.to(device), config)
    if use_task:
        str_task, conflict_fraction = task_penalty(
            model, batch, h_sel, positions, safety_ids.to(device), config, reduction="sum"
        )
        str_task = str_task / denominator
    loss = task if config is None else task + config.weight * (str_anchor + str_task)
    return LossTerms(loss, task.detach(), str_anchor.detach(), str_task.detach(), conflict_fraction.detach())


def with_anchor_rows(input_ids: Tensor, attention_mask: Tensor, anchors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Task rows ``(B, L)`` followed by the anchor rows, right-padded to a common length."""
    length = max(input_ids.shape[1], anchors["input_ids"].shape[1])
    return (
        torch.cat([_pad_to(input_ids, length, 0), _pad_to(anchors["input_ids"], length, 0)]),
        torch.cat([_pad_to(attention_mask, length, 0), _pad_to(anchors["attention_mask"], length, 0)]),
    )
