"""STR inside `transformers.Trainer` (and TRL's `SFTTrainer`, see :mod:`logitguard.hosts.sft_trainer`).

:class:`STRTrainerMixin` goes in front of a Trainer class and overrides
``compute_loss`` only to add λ·STR to whatever task loss the host computes
(Trainer's model loss, TRL's chunked NLL, DFT, label smoothing, ...):

* the step's anchor sequences, packed end to end into rows of the task length, join
  the task rows in the host's own forward pass, with labels ``-100`` so the task
  loss and ``num_items_in_batch`` do not see them: one forward and one backward
  carry both (``STRConfig.anchor_pass`` has the other layouts);
* a forward hook on the decoder stack keeps its final hidden states, from which
  :class:`~logitguard.core.objective.STRObjective` computes the STR terms (the same
  code as every other host);
* the task-batch reference comes from the same PEFT model with adapters disabled.

Each optimizer step's STR term is the mean over all its anchor (or label)
positions, across ranks and gradient-accumulation micro-batches, so the result
does not depend on how the global batch is split. ``log`` is extended to report
every term on its own (``task_loss``, ``str_anchor``, ``str_benign``, ``str_task``,
...), which reaches TensorBoard or W&B through the Trainer's own reporting. The terms
are summed on the device and read once per log, and checked once per optimizer step:
a NaN or infinite term stops the run before the optimizer step (:class:`NonFiniteLoss`).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.config import STRConfig
from logitguard.core.model_access import captured_hidden_states, head_on_first_rows
from logitguard.core.objective import TERMS as STR_TERMS
from logitguard.core.objective import STRObjective
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.core.schedule import StepShare
from logitguard.core.step import trainer_reductions
from logitguard.errors import LogitGuardError


class NonFiniteLoss(LogitGuardError):
    """A loss term became NaN or infinite: training stops before the optimizer step, and no adapter is written."""


class _StopOnNonFinite(TrainerCallback):
    """Before each optimizer step, stop the run if a term of the step was not finite (one check per step)."""

    def __init__(self, trainer: STRTrainerMixin) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._raise_if_not_finite(state.global_step + 1)
        return control


TERMS = ("task_loss", *STR_TERMS)


class STRTrainerMixin:
    """Adds Safety Token Regularization to a ``transformers.Trainer`` subclass.

    Use it first in the bases, e.g. ``class MyTrainer(STRTrainerMixin, Trainer)``.

    Args:
        str_config: STR settings.
        safety_tokens: the artifact of discovery; checked here against the tokenizer (``processing_class``) and
            the model's output layer, whatever the reference.
        anchors: the anchor cache (required for ``reference`` ``"anchors"``/``"both"``); checked against
            the model here, so a cache from another model is a clear error.
        benign_anchors: the benign anchor cache of two-sided STR (``str_config.benign_anchors_per_step > 0``).
    """

    def __init__(
        self,
        *args: Any,
        str_config: STRConfig,
        safety_tokens: SafetyTokens,
        anchors: AnchorCache | None = None,
        benign_anchors: AnchorCache | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.processing_class is not None and hasattr(self.processing_class, "get_vocab"):
            safety_tokens.check_tokenizer(self.processing_class)
        self.str_objective = STRObjective(str_config, safety_tokens, anchors, self.args.seed, benign_anchors)
        self.str_objective.check_model(self.model)
        self._micro_step = (-1, 0)  # (optimizer step, micro-batch index within it)
        self._str_sums: Tensor | None = None  # each term summed on the device since the last log (no host sync)
        self._str_count = 0
        self._not_finite: Tensor | None = None  # per term: became NaN/inf in this optimizer step
        self.add_callback(_StopOnNonFinite(self))

    logits_for_anchor_rows = False  # True for a host whose fused LM head skips -100 labels itself (TRL's)

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
        plan = objective.plan(inputs, self.state.global_step, self._step_share())
        host_inputs = {key: value for key, value in inputs.items() if key not in ("attention_mask", "position_ids")}
        host_inputs |= plan.inputs.model_inputs(self.logits_for_anchor_rows)
        unwrapped = self.accelerator.unwrap_model(model)
        head = nullcontext()
        if plan.inputs.extra_rows and not self.logits_for_anchor_rows:
            head = head_on_first_rows(unwrapped, plan.inputs.task_rows)  # no logits for the anchor rows
        with captured_hidden_states(unwrapped) as hidden_states, head:
            result = super().compute_loss(model, host_inputs, return_outputs, num_items_in_batch)
        task_loss, outputs = result if return_outputs else (result, None)
        reductions = trainer_reductions(self, inputs["labels"], num_items_in_batch)
        terms = objective.terms(unwrapped, hidden_states[0], inputs, plan, reductions.step_labels)
        loss = task_loss + reductions.factor * terms.penalty
        # logged per micro-batch as estimates of the step's mean (each share times the step's shares)
        parts = plan.share.parts
        shares = torch.cat([(task_loss.detach() / reductions.factor).reshape(1).float(), terms.stacked()])
        self._record(shares * torch.tensor([parts, parts, parts, parts, 1.0], device=shares.device))
        return (loss, outputs) if return_outputs else loss

    def _step_share(self) -> StepShare:
        """This micro-batch's place in the optimizer step (counted here: the Trainer does not say)."""
        step = self.state.global_step
        micro = self._micro_step[1] + 1 if self._micro_step[0] == step else 0
        self._micro_step = (step, micro)
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if micro >= steps:
            raise RuntimeError(f"more micro-batches than gradient-accumulation steps ({steps}) at step {step}")
        return StepShare(micro, steps, self.accelerator.process_index, self.accelerator.num_processes)

    def _record(self, terms: Tensor) -> None:
        """Add this micro-batch's ``(len(TERMS),)`` terms to the device-side sums, and note a non-finite one."""
        bad = ~torch.isfinite(terms)
        self._not_finite = bad if self._not_finite is None else self._not_finite | bad
        self._str_sums = terms if self._str_sums is None else self._str_sums + terms
        self._str_count += 1

    def _shown_terms(self) -> list[str]:
        config = self.str_config
        hidden = set()
        if not config.uses_anchors:
            hidden.add("str_anchor")
        if not config.two_sided:
            hidden.add("str_benign")
        if not config.uses_task:
            hidden |= {"str_task", "str_conflict_fraction"}
        return [term for term in TERMS if term not in hidden]

    def _raise_if_not_finite(self, step: int) -> None:
        """Stop the run (before the optimizer step) naming the step and the term that became NaN or infinite."""
        if self._not_finite is None:
            return
        flags, self._not_finite = self._not_finite.tolist(), None
        if any(flags):
            term = next(name for name, bad in zip(TERMS, flags, strict=True) if bad)
            raise NonFiniteLoss(
                f"step {step}: {term} became non-finite (NaN or inf); training stopped before the optimizer step and "
                "no adapter was written. Check the STR weight and the artifacts (logitguard tokens), or lower the "
                "learning rate"
            )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of each STR term since the last log (averaged over processes) to the Trainer's logs."""
        if self._str_sums is not None and "loss" in logs:  # the training log, not eval or a callback's own
            means = self.accelerator.reduce(self._str_sums / self._str_count, reduction="mean").tolist()
            values = dict(zip(TERMS, means, strict=True))
            logs.update({term: round(values[term], 6) for term in self._shown_terms()})
            self._str_sums, self._str_count = None, 0
        super().log(logs, *args, **kwargs)


class STRTrainer(STRTrainerMixin, Trainer):
    """``transformers.Trainer`` with Safety Token Regularization; see :class:`STRTrainerMixin`."""
