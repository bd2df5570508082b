"""STR in TRL's ``SFTTrainer``: its datasets, chat templates, completion-only and assistant-only losses and
chunked NLL stay as they are; STR is added to the loss (see :mod:`logitguard.hosts.trainer`).

Importing this module imports ``trl``.
"""

from __future__ import annotations

from trl import SFTTrainer

from logitguard.hosts.trainer import STRTrainerMixin


class STRSFTTrainer(STRTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` with Safety Token Regularization; takes ``str_config``, ``safety_tokens``, ``anchors``.

    TRL's fused LM head projects only positions with a label (the anchor rows' are ``-100``), and its other loss
    paths take the logits of every row, so the anchor rows keep their ``-100`` labels here.
    """

    logits_for_anchor_rows = True
