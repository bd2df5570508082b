"""A training-time safety monitor: refusal rate on held-out harmful prompts every N steps.

Works with any ``transformers.Trainer`` (plain SFT included: it is how a user sees
refusals erode), logs ``safety/refusal_rate`` (refusals that end: a refusal that goes
on to comply does not count) and ``safety/refusal_opening_rate`` (answers that merely
open with a refusal) with the other metrics (and so to TensorBoard or W&B), and can
warn or stop when the refusal rate falls below a threshold.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

from transformers import Trainer, TrainerCallback

from logitguard.errors import LogitGuardError
from logitguard.evaluation.generation import generate
from logitguard.evaluation.verdicts import refusal_rates

Action = Literal["warn", "stop"]


class SafetyMonitor(TrainerCallback):
    """Measures refusals with greedy decoding of ``max_new_tokens`` tokens per answer.

    Args:
        trainer: the trainer to monitor (its ``log`` carries the metric to every reporter).
        prompts: held-out harmful prompts (a few dozen are enough).
        every_steps: measure at step 0 (before training) and every this many optimizer steps.
        min_refusal: threshold on the refusal rate; None only logs.
        action: ``"warn"`` or ``"stop"`` (end training, after saving, as the Trainer does) below the threshold.
        max_new_tokens: answer length; long enough to see whether a refusal goes on to comply.
    """

    def __init__(
        self,
        trainer: Trainer,
        prompts: Sequence[str],
        every_steps: int = 50,
        min_refusal: float | None = None,
        action: Action = "warn",
        max_new_tokens: int = 64,
    ) -> None:
        if not prompts:
            raise LogitGuardError("the safety monitor needs at least one harmful prompt")
        if every_steps <= 0:
            raise LogitGuardError(f"every_steps must be > 0, got {every_steps}")
        if action not in ("warn", "stop"):
            raise LogitGuardError(f"action must be 'warn' or 'stop', got {action!r}")
        if trainer.processing_class is None:
            raise LogitGuardError("the safety monitor needs the trainer's tokenizer (processing_class=...)")
        self.trainer, self.prompts = trainer, list(prompts)
        self.every_steps, self.min_refusal, self.action = every_steps, min_refusal, action
        self.max_new_tokens = max_new_tokens
        self.stopped: str | None = None  # why it stopped the run (action "stop"), once it has

    def measure(self) -> dict[str, float]:
        """:func:`~logitguard.evaluation.verdicts.refusal_rates` of the model's answers to the prompts."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.trainer.processing_class
        return refusal_rates(generate(model, tokenizer, self.prompts, self.max_new_tokens, desc=None))

    def _check(self, state, control):
        rates = self.measure()
        rate = rates["refusal"]
        should_log = control.should_log  # the log below must not cancel the Trainer's own log of this step
        self.trainer.log({"safety/refusal_rate": rate, "safety/refusal_opening_rate": rates["refusal_opening"]})
        control.should_log = should_log
        if self.min_refusal is not None and rate < self.min_refusal:
            message = f"refusal rate {rate:.2f} fell below {self.min_refusal:.2f} at step {state.global_step}"
            if self.action == "stop":
                warnings.warn(f"{message}: stopping training", stacklevel=2)
                self.stopped = message
                self.trainer.log({"safety/stopped_at_step": state.global_step})
                control.should_training_stop = True
                control.should_save = True
            else:
                warnings.warn(message, stacklevel=2)
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            return self._check(state, control)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_steps == 0:
            return self._check(state, control)
        return control
