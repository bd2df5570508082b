"""The STR step: :class:`STRObjective`, the one implementation every host calls, and its penalties.

A host (``str_loss`` for a custom loop, :class:`~logitguard.hosts.trainer.STRTrainerMixin` in a
``transformers.Trainer``, an integration through it) does three things around it:

1. ``plan = objective.plan(batch, step, share)``: this forward pass's share of the step's anchor draw (a
   :class:`~logitguard.core.schedule.StepShare`: micro-batch and process), laid out against this batch, its
   padding checked (:func:`~logitguard.core.layout.lay_out`); then its forward pass over
   ``plan.inputs.model_inputs()``, keeping the final hidden states;
2. ``terms = objective.terms(model, hidden, batch, plan, step_labels)``: the STR terms of this pass, each
   normalised to its share of the step's mean (anchor terms over the whole step's anchor positions, the
   task-reference term over the step's ``step_labels`` label tokens), so the shares of a step add up to its mean
   however the step is split;
3. ``loss = task_loss + reductions.factor * terms.penalty``: ``factor`` undoes what the host does to a loss before
   its gradient (division by gradient-accumulation steps, averaging over processes):
   :mod:`logitguard.core.step`.

The safety-token logits are always ``hidden @ W_out[ids].T``: no full-vocabulary logits beyond the
log-normaliser at anchor positions. The references:

* ``"anchors"``: harmful prompts with the aligned model's refusals, references cached before training
  (:mod:`logitguard.core.anchor_cache`); optionally also *benign anchors* (two-sided STR): safe prompts that sound
  unsafe with the aligned model's own helpful answers, under the same penalty, so fine-tuning can push the model
  neither toward complying with harmful requests nor toward refusing safe ones;
* ``"task"``: the task batch itself, the reference being the same PEFT model with its adapters disabled.
  Positions where that reference would rather emit a safety token than the data's own next token are
  *conflicts* (the aligned model refuses what the task asks for); they are left out, since pinning them
  would block the task.

Shapes: ``B`` task rows, ``L`` their length, ``d`` hidden size, ``k`` safety tokens, ``n`` selected positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.config import STRConfig
from logitguard.core.layout import AnchorLayout, AnchorSequences, AnchorTargets, ForwardInputs, lay_out
from logitguard.core.model_access import (
    check_head_readable,
    final_hidden_states,
    head_available,
    output_rows,
    reference_mode,
    vocab_size,
)
from logitguard.core.penalties import salient_log_probs, salient_logits, with_target_column
from logitguard.core.safety_tokens import SafetyTokens, check_vocabulary
from logitguard.core.schedule import AnchorRows, AnchorSchedule, StepShare, shard
from logitguard.data.chat import IGNORE_INDEX
from logitguard.errors import LogitGuardError

TERMS = ("str_anchor", "str_benign", "str_task", "str_conflict_fraction")


@dataclass
class StepPlan:
    """One forward pass of a step: its share, the anchor rows drawn for it and the rows the host's pass runs."""

    step: int
    share: StepShare
    rows: AnchorRows | None
    inputs: ForwardInputs


@dataclass
class STRTerms:
    """The STR terms of one forward pass, each its share of the step's mean (the shares of a step add up to it).

    Attributes:
        anchor: scalar, the harmful anchors' penalty summed over this share's positions / the step's positions.
        benign: scalar, the same for the benign anchors (0 when one-sided).
        task: scalar, the task-reference penalty summed over this batch's label positions / the step's labels.
        conflict_fraction: scalar, share of this batch's label positions left out as refusal conflicts.
        weight: λ.
    """

    anchor: Tensor
    benign: Tensor
    task: Tensor
    conflict_fraction: Tensor
    weight: float

    @property
    def penalty(self) -> Tensor:
        """λ·(anchor + benign + task): what this pass adds to the step's loss (before the host's factor)."""
        return self.weight * (self.anchor + self.benign + self.task)

    def stacked(self) -> Tensor:
        """``(4,)`` fp32 detached anchor, benign, task and conflict fraction (the order of :data:`TERMS`)."""
        return torch.stack([self.anchor, self.benign, self.task, self.conflict_fraction]).detach().float()


class STRObjective:
    """One STR step, the same in every host.

    Args:
        config: STR settings.
        safety_tokens: the artifact of discovery (its ids are the k tokens).
        anchors: the anchor cache; required when ``config.uses_anchors``.
        seed: seed of the anchor schedule (the run's seed: resumed runs and all ranks draw the same rows).
        benign_anchors: the benign anchor cache; required when ``config.benign_anchors_per_step > 0``.
    """

    def __init__(
        self,
        config: STRConfig,
        safety_tokens: SafetyTokens,
        anchors: AnchorCache | None = None,
        seed: int = 0,
        benign_anchors: AnchorCache | None = None,
    ) -> None:
        if not isinstance(config, STRConfig):
            raise LogitGuardError(f"config must be an STRConfig, got {type(config).__name__}")
        if config.uses_anchors and anchors is None:
            raise LogitGuardError(f"STR reference {config.reference!r} needs an anchor cache")
        if config.two_sided and benign_anchors is None:
            raise LogitGuardError("two-sided STR (benign_anchors_per_step > 0) needs a benign anchor cache")
        self.config = config
        self.safety_tokens = safety_tokens
        self.ids = safety_tokens.id_tensor()
        self.anchors = anchors if config.uses_anchors else None
        self.benign_anchors = benign_anchors if config.two_sided else None
        self.schedule = self.benign_schedule = None
        if self.anchors is not None:
            self.schedule = AnchorSchedule(len(anchors), config.anchors_per_step, config.anchor_every, seed)
            self.targets = AnchorTargets(self.anchors, config.anchor_tokens)
        if self.benign_anchors is not None:
            every = config.anchor_every
            self.benign_schedule = AnchorSchedule(len(benign_anchors), config.benign_anchors_per_step, every, seed + 1)
            self.benign_targets = AnchorTargets(self.benign_anchors, config.anchor_tokens)
        self._device_ids: dict[torch.device, Tensor] = {}
        self._checked: set[int] = set()

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model the artifacts were not made from, or whose LM head STR cannot read (once per model).

        The anchor caches are checked by what STR reads of them: their reference logits, recomputed on the model
        (:meth:`~logitguard.core.anchor_cache.AnchorCache.check`).
        """
        if id(model) in self._checked:
            return
        check_head_readable(model)
        check_vocabulary(self.safety_tokens, vocab_size(model))
        if self.anchors is not None:
            self.anchors.check(model, self.safety_tokens)
        if self.benign_anchors is not None:
            self.benign_anchors.check(model, self.safety_tokens, "benign anchor cache")
        self._checked.add(id(model))

    def anchor_rows(self, step: int, share: StepShare | None = None) -> AnchorRows | None:
        """``share``'s part of optimizer step ``step``'s draw (default: the whole draw); None on a step without
        anchors."""
        if self.schedule is None or not self.schedule.active(step):
            return None
        share = share or StepShare()
        parts = share.parts
        draw = self.schedule.rows(step)
        if len(draw) < parts:
            raise LogitGuardError(
                f"anchors_per_step ({len(draw)}) must be at least processes × gradient-accumulation steps ({parts}), "
                "so every micro-batch gets an anchor row"
            )
        benign = torch.zeros(0, dtype=torch.long)
        benign_positions = 1
        if self.benign_schedule is not None:
            benign_draw = self.benign_schedule.rows(step)
            if len(benign_draw) < parts:
                raise LogitGuardError(
                    f"benign_anchors_per_step ({len(benign_draw)}) must be at least processes × gradient-accumulation "
                    f"steps ({parts})"
                )
            benign = shard(benign_draw, share.part, parts)
            benign_positions = self.benign_targets.positions(benign_draw)
        positions = self.targets.positions(draw)
        return AnchorRows(shard(draw, share.part, parts), benign, max(positions, 1), max(benign_positions, 1))

    def plan(self, batch: dict[str, Tensor], step: int, share: StepShare | None = None) -> StepPlan:
        """This forward pass of optimizer step ``step``: its anchor rows and the rows the host's pass runs (the task
        batch ``input_ids``/``attention_mask``/``labels`` ``(B, L)``, then packed anchors when they join it)."""
        rows = self.anchor_rows(step, share)
        sequences = None
        if rows is not None:
            parts = [(self.targets, rows.harmful)]
            if self.benign_anchors is not None and len(rows.benign):
                parts.append((self.benign_targets, rows.benign))
            sequences = AnchorSequences.gather(parts)
        return StepPlan(step, share or StepShare(), rows, lay_out(batch, sequences, self.config.anchor_pass))

    def terms(
        self, model: nn.Module, hidden: Tensor, batch: dict[str, Tensor], plan: StepPlan, step_labels: Tensor | int
    ) -> STRTerms:
        """The STR terms of one forward pass, each normalised to its share of the step's mean.

        Args:
            model: the model being trained (a PEFT model for the task reference; not a DDP/FSDP wrapper).
            hidden: ``(B [+ P], L', d)`` final hidden states of the host's forward pass over ``plan.inputs``.
            batch: the task rows ``input_ids``/``attention_mask``/``labels`` ``(B, L)``.
            plan: what :meth:`plan` returned for this pass.
            step_labels: label tokens in the whole step (every micro-batch and process): the task-reference
                term's denominator, as the task loss's (:mod:`logitguard.core.step`).
        """
        self.check_model(model)
        with head_available(model):
            anchor, benign, task, conflicts = self._sums(model, hidden, batch, plan.inputs)
        rows = plan.rows
        if rows is not None:
            anchor, benign = anchor / rows.step_positions, benign / rows.benign_step_positions
        task = task / torch.as_tensor(step_labels, device=task.device).clamp(min=1)
        return STRTerms(anchor, benign, task, conflicts, self.config.weight)

    def _sums(
        self, model: nn.Module, hidden: Tensor, batch: dict[str, Tensor], inputs: ForwardInputs
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The penalties summed over this pass's harmful anchor, benign anchor and task label positions, and the
        fraction of label positions left out as conflicts."""
        device = hidden.device
        ids = self._device_ids.setdefault(device, self.ids.to(device))
        zero = hidden.new_zeros((), dtype=torch.float32)
        anchor = benign = task = conflicts = zero
        layout = inputs.layout
        if layout is not None:
            if layout.mode == "separate":
                with record_function("str: separate pass"):
                    states = final_hidden_states(model, layout.separate_ids, layout.separate_mask)
            else:
                states = hidden
            with record_function("str: anchor penalty"):
                per_position = anchor_penalty(model, states[layout.row, layout.column], layout, ids, self.config)
            anchor = torch.where(layout.benign, 0.0, per_position).sum()
            benign = torch.where(layout.benign, per_position, 0.0).sum()
        if self.config.uses_task:
            labels = batch["labels"]
            positions = labels[:, 1:] != IGNORE_INDEX
            h_sel = hidden[: labels.shape[0], : labels.shape[1] - 1][positions]
            with record_function("str: task reference"):
                task, conflicts = task_penalty(model, batch, h_sel, positions, ids, self.config)
        return anchor, benign, task, conflicts


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


def anchor_penalty(model: nn.Module, h_target: Tensor, layout: AnchorLayout, ids: Tensor, config: STRConfig) -> Tensor:
    """STR at anchor target positions: ``(n,)`` the penalty of the model's bucket distribution against the cache's.

    Args:
        model: the model being trained (its output embedding gives ``W_out[ids]``).
        h_target: ``(n, d)`` final hidden states at the target positions.
        layout: their references ``(n, k + 2)`` and next tokens ``(n,)``.
        ids: ``(k,)`` safety-token ids.
    """
    k = len(ids)
    w_ids, b_ids = output_rows(model, ids)
    current, reference = salient_logits(h_target, w_ids, b_ids), layout.reference[:, :k]
    if config.target_bucket:
        w_next, b_next = output_rows(model, layout.next_ids)
        current_next = (h_target * w_next.to(h_target.dtype)).sum(-1) + (0 if b_next is None else b_next)
        is_salient = (layout.next_ids.unsqueeze(-1) == ids).any(-1)
        current = with_target_column(current, current_next, is_salient)
        reference = with_target_column(reference, layout.reference[:, k + 1], is_salient)
    if config.rest_bucket:
        weight, bias = output_rows(model)
        with record_function("str: log-normaliser"):
            normaliser = F.linear(h_target, weight, bias).float().logsumexp(-1)
        current = salient_log_probs(current, normaliser)
        reference = salient_log_probs(reference, layout.reference[:, k])
    keep = torch.ones(len(h_target), dtype=torch.bool, device=h_target.device)
    return config.penalty_fn()(current, reference, keep, reduction="none")


def task_penalty(
    model: nn.Module,
    batch: dict[str, Tensor],
    h_sel: Tensor,
    positions: Tensor,
    ids: Tensor,
    config: STRConfig,
) -> tuple[Tensor, Tensor]:
    """STR on the task batch against the same PEFT model with its adapters disabled, summed over kept positions.

    Args:
        model: the PEFT model being trained (not a DDP/FSDP wrapper: its adapters are switched off).
        batch: ``input_ids``/``attention_mask``/``labels`` ``(B, L)`` of the task rows.
        h_sel: ``(n, d)`` the model's final hidden states at the selected positions.
        positions: ``(B, L - 1)`` bool, the positions (predicting ``labels[:, 1:]``) that ``h_sel`` holds.
        ids: ``(k,)`` safety-token ids.

    Returns:
        The summed penalty and the fraction of positions left out as refusal conflicts.
    """
    y_sel = batch["labels"][:, 1:][positions]
    w_ids, b_ids = output_rows(model, ids)
    conflict_fraction = torch.zeros((), device=h_sel.device)
    with reference_mode(model):
        ref_hidden = final_hidden_states(model, batch["input_ids"], batch.get("attention_mask"))[:, :-1][positions]
        ref_salient = salient_logits(ref_hidden, w_ids, b_ids)
        keep = torch.ones_like(y_sel, dtype=torch.bool)
        if config.mask_conflicts and y_sel.numel():
            weight, bias = output_rows(model)
            ref_label = (ref_hidden * weight[y_sel]).sum(-1) + (0 if bias is None else bias[y_sel])
            conflicts = refusal_conflicts(ref_salient, ref_label, y_sel, ids)
            keep = ~conflicts
            conflict_fraction = conflicts.float().mean()
    penalty = config.penalty_fn()(salient_logits(h_sel, w_ids, b_ids), ref_salient, keep, reduction="sum")
    return penalty, conflict_fraction
