"""LogitGuard: keep an aligned LLM safe while it is fine-tuned (Safety Token Regularization).

The public API, imported lazily (``import logitguard`` loads no torch or transformers until a name is used)::

    from logitguard import STRConfig, STRTrainer, safety_artifacts

* :class:`STRConfig`, :class:`STRObjective`: STR's settings and the one implementation of an STR step;
* :class:`STRTrainer`, :class:`STRTrainerMixin`, :class:`STRSFTTrainer` (needs ``trl``): STR in
  ``transformers.Trainer`` and TRL's ``SFTTrainer``; :func:`str_loss`: STR in your own loop;
* :func:`safety_artifacts`, :class:`SafetyTokens`, :class:`AnchorCache`: the artifacts STR trains with;
* :class:`SafetyMonitor`: refusals logged (and guarded) during any Trainer run;
* :func:`judge_response`, :func:`refusal_rates`: whole-answer refusal verdicts;
* :func:`load_model`, :func:`load_tokenizer`: models by hub name, folder, ``.gguf`` file or built-in name;
* :class:`LogitGuardError`: what bad input raises.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "STRConfig": "logitguard.regularizer",
    "STRObjective": "logitguard.regularizer",
    "STRTrainer": "logitguard.str_trainer",
    "STRTrainerMixin": "logitguard.str_trainer",
    "STRSFTTrainer": "logitguard.str_sft_trainer",
    "str_loss": "logitguard.custom_loop",
    "safety_artifacts": "logitguard.artifacts",
    "SafetyTokens": "logitguard.discovery",
    "AnchorCache": "logitguard.anchors",
    "SafetyMonitor": "logitguard.monitor",
    "judge_response": "logitguard.refusal",
    "refusal_rates": "logitguard.refusal",
    "load_model": "logitguard.models",
    "load_tokenizer": "logitguard.models",
    "LogitGuardError": "logitguard.errors",
}
__all__ = [
    "AnchorCache",
    "LogitGuardError",
    "STRConfig",
    "STRObjective",
    "STRSFTTrainer",
    "STRTrainer",
    "STRTrainerMixin",
    "SafetyMonitor",
    "SafetyTokens",
    "judge_response",
    "load_model",
    "load_tokenizer",
    "refusal_rates",
    "safety_artifacts",
    "str_loss",
]

if TYPE_CHECKING:
    from logitguard.anchors import AnchorCache
    from logitguard.artifacts import safety_artifacts
    from logitguard.custom_loop import str_loss
    from logitguard.discovery import SafetyTokens
    from logitguard.errors import LogitGuardError
    from logitguard.models import load_model, load_tokenizer
    from logitguard.monitor import SafetyMonitor
    from logitguard.refusal import judge_response, refusal_rates
    from logitguard.regularizer import STRConfig, STRObjective
    from logitguard.str_sft_trainer import STRSFTTrainer
    from logitguard.str_trainer import STRTrainer, STRTrainerMixin


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'logitguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
