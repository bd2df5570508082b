"""GGUF files as safetensors folders: ``transformers`` dequantises a GGUF file to float32 but cannot
``save_pretrained`` the result, so each file is converted once into a folder in the cache, keyed by its content."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from logitguard.errors import LogitGuardError
from logitguard.fingerprints import file_fingerprint
from logitguard.models.cache import cache_root
from logitguard.outputs import built_once


def converted_gguf(path: Path, fingerprint: str | None = None) -> Path:
    """A safetensors folder (model, tokenizer, chat template) of the GGUF file ``path``, converted once.

    The folder is named by the file's content fingerprint (``fingerprint`` when the caller has just computed it).
    """
    folder = cache_root() / f"gguf-{path.stem}-{fingerprint or file_fingerprint(path)}"
    if (folder / "config.json").is_file():
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise LogitGuardError(f"reading {path.name} needs the gguf package: pip install 'logitguard[gguf]'")

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        config = loaded.config
        config.quantization_config = None  # a GGUF-loaded model refuses save_pretrained; rebuild it without one
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return built_once(folder, lambda f: (f / "config.json").is_file(), build)
