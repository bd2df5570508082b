"""LogitGuard as an Axolotl plugin: STR in Axolotl's own trainer, its settings in Axolotl's YAML.

Use it (an example: ``configs/frameworks/axolotl_qwen2.5_1.5b_lora_str.yaml``)::

    plugins:
      - logitguard.integrations.axolotl.LogitGuardPlugin
    logitguard:          # the keys and defaults of the `str:` section of `logitguard train`
      weight: 0.3
      k: 32

then ``logitguard check axolotl cfg.yml`` (fails when the plugin path is misspelled, which Axolotl only logs and
then trains without STR, or when another plugin's trainer would win) and ``axolotl train cfg.yml``. The settings
are validated by Axolotl's schema; the safety tokens and anchors are made from the model on first use (or read from
``logitguard.tokens``/``logitguard.anchors``) into ``output_dir``, where ``logitguard_str.json`` records that STR
ran. Supports supervised fine-tuning (no ``rl:``) with padded batches (``sample_packing: false``).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, ConfigDict, Field, create_model

from logitguard.errors import LogitGuardError
from logitguard.integrations.host import str_host_trainer
from logitguard.settings import STRSection

PLUGIN = "logitguard.integrations.axolotl.LogitGuardPlugin"


def _settings_model() -> type[BaseModel]:
    """A pydantic model of :class:`STRSection`'s fields (types and defaults), unknown keys forbidden."""
    hints = typing.get_type_hints(STRSection)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(STRSection)}
    return create_model("LogitGuardSettings", __config__=ConfigDict(extra="forbid"), **fields)


LogitGuardSettings = _settings_model()


class LogitGuardArgs(BaseModel):
    """The ``logitguard:`` block of an Axolotl config."""

    logitguard: LogitGuardSettings = Field(default_factory=LogitGuardSettings)  # type: ignore[valid-type]


def settings_from(cfg: Any) -> STRSection:
    """The STR section of an Axolotl config (its own checks, e.g. λ >= 0, raise naming the block)."""
    block = cfg.get("logitguard") or {}
    values = block.model_dump() if isinstance(block, BaseModel) else dict(block)
    try:
        return STRSection(**values)
    except (TypeError, ValueError) as e:
        raise LogitGuardError(f"axolotl config: logitguard: {e}") from None


class LogitGuardPlugin(BasePlugin):
    """Adds Safety Token Regularization to Axolotl's supervised fine-tuning."""

    def get_input_args(self) -> str:
        return "logitguard.integrations.axolotl.LogitGuardArgs"

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
