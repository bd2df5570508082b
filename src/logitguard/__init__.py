"""LogitGuard: keep an aligned LLM safe while it is fine-tuned (Safety Token Regularization).

The public API, imported lazily (``import logitguard`` loads no torch or transformers until a name is used)::

    from logitguard import STRConfig, STRTrainer, safety_artifacts

* :class:`STRConfig`, :class:`STRObjective`: STR's settings and the one implementation of an STR step;
* :class:`STRTrainer`, :class:`STRTrainerMixin`, :class:`STRSFTTrainer` (needs ``trl``): STR in
  ``transformers.Trainer`` and TRL's ``SFTTrainer``; :func:`str_loss` (its :class:`LossTerms`): STR in your own
  loop; :class:`NonFiniteLoss`: what a NaN or infinite term raises, before the optimizer step;
* :func:`safety_artifacts` (a :class:`SafetyArtifacts`), :func:`benign_anchors` (two-sided STR),
  :class:`SafetyTokens`, :class:`AnchorCache`: the artifacts STR trains with;
* :func:`select_samples`, :class:`SelectionConfig`: sample selection before fine-tuning (Moderate-Gi and the
  other scores);
* :class:`SafetyMonitor`: refusals logged (and guarded) during any Trainer run;
* :func:`judge_response`, :func:`refusal_rates`: whole-answer refusal verdicts;
* :func:`encode_chat`, :func:`collate`: chat data as STR's hosts take it (labels on the answer, rows right-padded);
* :func:`load_model`, :func:`load_tokenizer`: models by hub name, folder, ``.gguf`` file or built-in name;
* :class:`LogitGuardError`: what bad input raises.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "STRConfig": "logitguard.core.config",
    "STRObjective": "logitguard.core.objective",
    "STRTrainer": "logitguard.hosts.trainer",
    "STRTrainerMixin": "logitguard.hosts.trainer",
    "NonFiniteLoss": "logitguard.hosts.trainer",
    "STRSFTTrainer": "logitguard.hosts.sft_trainer",
    "str_loss": "logitguard.hosts.custom_loop",
    "LossTerms": "logitguard.hosts.custom_loop",
    "safety_artifacts": "logitguard.artifacts",
    "benign_anchors": "logitguard.artifacts",
    "SafetyArtifacts": "logitguard.artifacts",
    "SafetyTokens": "logitguard.core.safety_tokens",
    "AnchorCache": "logitguard.core.anchor_cache",
    "select_samples": "logitguard.selection",
    "SelectionConfig": "logitguard.selection",
    "SafetyMonitor": "logitguard.hosts.monitor",
    "judge_response": "logitguard.evaluation.verdicts",
    "refusal_rates": "logitguard.evaluation.verdicts",
    "load_model": "logitguard.models.loading",
    "load_tokenizer": "logitguard.models.loading",
    "LogitGuardError": "logitguard.errors",
    "encode_chat": "logitguard.data.chat",
    "collate": "logitguard.data.chat",
}
__all__ = [
    "AnchorCache",
    "LogitGuardError",
    "LossTerms",
    "NonFiniteLoss",
    "STRConfig",
    "STRObjective",
    "STRSFTTrainer",
    "STRTrainer",
    "STRTrainerMixin",
    "SafetyArtifacts",
    "SafetyMonitor",
    "SafetyTokens",
    "SelectionConfig",
    "benign_anchors",
    "collate",
    "encode_chat",
    "judge_response",
    "load_model",
    "load_tokenizer",
    "refusal_rates",
    "safety_artifacts",
    "select_samples",
    "str_loss",
]

if TYPE_CHECKING:
    from logitguard.artifacts import SafetyArtifacts, benign_anchors, safety_artifacts
    from logitguard.core.anchor_cache import AnchorCache
    from logitguard.core.config import STRConfig
    from logitguard.core.objective import STRObjective
    from logitguard.core.safety_tokens import SafetyTokens
    from logitguard.data.chat import collate, encode_chat
    from logitguard.errors import LogitGuardError
    from logitguard.evaluation.verdicts import judge_response, refusal_rates
    from logitguard.hosts.custom_loop import LossTerms, str_loss
    from logitguard.hosts.monitor import SafetyMonitor
    from logitguard.hosts.sft_trainer import STRSFTTrainer
    from logitguard.hosts.trainer import NonFiniteLoss, STRTrainer, STRTrainerMixin
    from logitguard.models.loading import load_model, load_tokenizer
    from logitguard.selection import SelectionConfig, select_samples


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'logitguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
