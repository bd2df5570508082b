"""LogitGuard as an Axolotl plugin: STR in Axolotl's own trainer, its settings in Axolotl's YAML.

Use it (an example: ``configs/frameworks/axolotl_qwen2.5_1.5b_lora_str.yaml``)::

    plugins:
      - logitguard.integrations.axolotl.LogitGuardPlugin
    logitguard:          # the keys and defaults of the `str:` section of `logitguard train`
      weight: 0.3
      k: 32

then ``logitguard check axolotl cfg.yml`` (fails when the plugin path is misspelled, which Axolotl only logs and
then trains without STR, or when another plugin's trainer would win) and ``axolotl train cfg.yml``. The settings
are checked as ``logitguard train``'s ``str:`` section is (:mod:`logitguard.integrations.axolotl_schema`); the
safety tokens and anchors are made from the model on first use (or read from ``logitguard.tokens``/
``logitguard.anchors``) into ``output_dir``, where ``logitguard_str.json`` records that STR ran.
Supports supervised fine-tuning (no ``rl:``) with padded batches (``sample_packing: false``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel

from logitguard.errors import LogitGuardError
from logitguard.integrations.axolotl_schema import LogitGuardArgs
from logitguard.integrations.host import str_host_trainer
from logitguard.settings import STRSection, str_block

PLUGIN = "logitguard.integrations.axolotl.LogitGuardPlugin"
__all__ = ["PLUGIN", "LogitGuardArgs", "LogitGuardPlugin", "settings_from"]


def settings_from(cfg: Any) -> STRSection:
    """The STR section of an Axolotl config (checked as a run config's ``str:`` section is)."""
    block = cfg.get("logitguard")
    if isinstance(block, BaseModel):
        block = block.model_dump()
    elif isinstance(block, Mapping):  # Axolotl's DictDefault answers None for any attribute: read it as a mapping
        block = dict(block)
    return str_block(block, "axolotl config", "logitguard")


class LogitGuardPlugin(BasePlugin):
    """Adds Safety Token Regularization to Axolotl's supervised fine-tuning."""

    def get_input_args(self) -> str:
        return "logitguard.integrations.axolotl_schema.LogitGuardArgs"

    def pre_model_load(self, cfg: Any) -> None:
        # Axolotl seeds inside Trainer.__init__, after the LoRA adapters are initialised: seed here so the
        # initialisation, and so the run, is reproducible.
        from transformers import set_seed

        set_seed(cfg.get("seed") if cfg.get("seed") is not None else 42)

    def get_trainer_cls(self, cfg: Any) -> type | None:
        section = settings_from(cfg)
        if not section.enabled:
            print("\nLogitGuard STR is OFF (logitguard.enabled: false): Axolotl's own trainer\n", file=sys.stderr)
            return None
        if cfg.get("rl"):
            raise LogitGuardError(f"LogitGuard STR supports supervised fine-tuning; this config has rl: {cfg.rl}")
        if cfg.get("sample_packing"):
            raise LogitGuardError("LogitGuard STR needs padded batches: set sample_packing: false")
        from axolotl.core.trainers.base import AxolotlTrainer

        return str_host_trainer(AxolotlTrainer, section)
