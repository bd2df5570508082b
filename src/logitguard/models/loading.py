"""Load a user's causal LM and tokenizer with safe, documented defaults.

A model is named by a hub name, a local folder, a ``.gguf`` file, or a built-in name
(:data:`~logitguard.models.builtin.BUILTIN_MODELS`); the latter two are converted once into a safetensors folder
in the cache (:func:`~logitguard.models.builtin.resolve_model`). Remote code is never run unless asked for.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from logitguard.data.chat import check_chat_template
from logitguard.errors import LogitGuardError
from logitguard.models.builtin import resolve_model

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(
    name_or_path: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
    chat_template: str | None = None,
) -> PreTrainedTokenizerBase:
    """The tokenizer, ready for chat training and batched generation.

    ``chat_template`` (a Jinja file, or a template string, recognised by its ``{{``/``{%``) replaces the
    tokenizer's own; a path that does not exist is an error (never used as the template's text), as is a
    tokenizer left without a template. A tokenizer
    without a pad token gets its EOS token as pad (the usual choice; labels and
    attention masks never depend on the pad id).
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model(name_or_path), trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError) as e:
        if isinstance(e, LogitGuardError):
            raise
        raise LogitGuardError(f"could not load the tokenizer of {name_or_path!r}: {e}") from e
    if chat_template:
        tokenizer.chat_template = read_chat_template(chat_template)
    check_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise LogitGuardError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token; set one")
        warnings.warn(f"tokenizer of {name_or_path!r} has no pad token; using its EOS token", stacklevel=2)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_chat_template(template: str) -> str:
    """The Jinja text of ``template``: a template string as given, else the contents of that file."""
    if "{{" in template or "{%" in template:
        return template
    path = Path(template)
    if not path.is_file():
        raise FileNotFoundError(f"chat template: no such file {template}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LogitGuardError(f"{path}: the chat template is not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_model(
    name_or_path: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """The causal LM through ``from_pretrained`` (safetensors; no remote code unless asked).

    ``load_in_4bit`` loads NF4 weights for QLoRA (bitsandbytes on a CUDA GPU; the
    LM head stays unquantised, so the safety-token rows are exact).
    """
    if dtype not in DTYPES:
        raise LogitGuardError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    extra = {}
    if load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise LogitGuardError("QLoRA (model.load_in_4bit) needs a CUDA GPU and the bitsandbytes package")
        from transformers import BitsAndBytesConfig

        compute_dtype = torch.bfloat16 if dtype == "auto" else DTYPES[dtype]
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
        extra["device_map"] = {"": torch.device(device or "cuda").index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model(name_or_path),
            trust_remote_code=trust_remote_code,
            revision=revision,
            dtype=DTYPES[dtype],
            **extra,
        )
    except (OSError, ValueError) as e:
        if isinstance(e, LogitGuardError):
            raise
        raise LogitGuardError(f"could not load the model {name_or_path!r}: {e}") from e
    return model if load_in_4bit or device is None else model.to(device)
