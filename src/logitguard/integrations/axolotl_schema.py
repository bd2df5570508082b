"""The ``logitguard:`` block of an Axolotl config as Axolotl's pydantic schema sees it (pydantic only, no Axolotl).

The block's values are checked by :func:`logitguard.settings.str_block`, the checker of ``logitguard train``'s
``str:`` section, not by pydantic's own coercion: a quoted ``"0.3"`` is refused here as it is there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator

from logitguard.settings import str_block


class LogitGuardArgs(BaseModel):
    """The ``logitguard:`` block of an Axolotl config."""

    logitguard: Any = None

    @field_validator("logitguard")
    @classmethod
    def _checked(cls, block: Any) -> Any:
        str_block(block, "axolotl config", "logitguard")
        return block
