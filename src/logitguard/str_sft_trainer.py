"""STR in TRL's ``SFTTrainer``: its datasets, chat templates, completion-only and assistant-only losses and
chunked NLL stay as they are; STR is added to the loss (see :mod:`logitguard.str_trainer`).

Importing this module imports ``trl``.
"""

from __future__ import annotations

from trl import SFTTrainer

from logitguard.str_trainer import STRTrainerMixin


class STRSFTTrainer(STRTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` with Safety Token Regularization; takes ``str_config``, ``safety_tokens``, ``anchors``."""
