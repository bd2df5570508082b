"""Where LogitGuard keeps what it builds once: the toy models and converted real models."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_root() -> Path:
    """``$LOGITGUARD_CACHE``, or the user cache directory."""
    return Path(os.environ.get("LOGITGUARD_CACHE") or user_cache_dir("logitguard"))
