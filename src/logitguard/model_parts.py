"""Reach inside a causal LM (plain or PEFT-wrapped) for what STR needs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from logitguard.errors import LogitGuardError


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers causal LM inside a PEFT model (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_stack(model: nn.Module) -> nn.Module:
    """The causal LM's decoder without its LM head (``model.model`` for Llama, Qwen, Mistral)."""
    causal_lm = unwrap(model)
    return getattr(causal_lm, causal_lm.base_model_prefix)


def final_hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``(B, L, d)`` last hidden states after the final norm, without the LM head.

    Runs only the decoder stack, so no full-vocabulary logits are built.
    """
    return decoder_stack(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def output_rows(model: nn.Module, ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Rows ``ids`` of the output embedding (all rows if None) and of its bias, if any."""
    head = unwrap(model).get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if ids is None:
        return weight, bias
    ids = ids.to(weight.device)
    return weight[ids], None if bias is None else bias[ids]


def model_fingerprint(model: nn.Module, ids: Tensor) -> str:
    """Hash of the architecture and the output rows of ``ids``.

    LoRA leaves the output embedding frozen, so the fingerprint of a PEFT model
    equals that of the aligned model it wraps.
    """
    causal_lm = unwrap(model)
    weight, _ = output_rows(model, ids)
    digest = hashlib.sha256()
    digest.update(type(causal_lm).__name__.encode())
    digest.update(f"{causal_lm.config.vocab_size}:{causal_lm.config.hidden_size}".encode())
    digest.update(weight.detach().float().cpu().numpy().round(4).tobytes())
    return digest.hexdigest()[:16]


BASE_FILE = "logitguard_base.json"


def base_fingerprint(model: nn.Module, values: int = 4096) -> str:
    """Hash of the base model's weights (adapters left out): names, shapes and leading values in bfloat16.

    bfloat16 makes the same checkpoint hash alike whether it was loaded in fp32 or bf16; a merged or another
    fine-tuned base changes its leading values and so its hash. Written beside each adapter LogitGuard saves
    (:data:`BASE_FILE`) and checked when the adapter is loaded for evaluation.
    """
    digest = hashlib.sha256()
    for name, p in unwrap(model).named_parameters():
        if "lora_" in name:
            continue
        digest.update(f"{name.replace('.base_layer', '')}:{tuple(p.shape)}".encode())
        leading = p.detach().flatten()[:values].to(torch.bfloat16).view(torch.int16).cpu()
        digest.update(leading.numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def reference_mode(model: nn.Module) -> Iterator[None]:
    """The aligned model inside a PEFT model: adapters off, dropout off, no grad."""
    if not hasattr(model, "disable_adapter"):
        raise LogitGuardError(
            "the task-batch reference needs a PEFT model (its adapters disabled give the aligned model); "
            "for full fine-tuning use reference='anchors', whose reference values are cached before training"
        )
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter(), torch.no_grad():
            yield
    finally:
        model.train(was_training)
