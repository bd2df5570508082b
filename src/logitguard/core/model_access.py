"""Reach inside a causal LM (plain, PEFT- or DDP-wrapped) for what STR needs: its decoder stack, final hidden
states and output rows, the aligned model inside a PEFT model, and eval mode for a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from logitguard.errors import LogitGuardError
from logitguard.fingerprints import fingerprint


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or FSDP1) wrapper: a PEFT model or a causal LM."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers causal LM inside a PEFT model (LoRA layers stay injected) and any parallel wrapper."""
    model = unwrap_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_stack(model: nn.Module) -> nn.Module:
    """The causal LM's decoder without its LM head (``model.model`` for Llama, Qwen, Mistral)."""
    causal_lm = unwrap(model)
    return getattr(causal_lm, causal_lm.base_model_prefix)


def final_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None = None
) -> Tensor:
    """``(B, L, d)`` last hidden states after the final norm, without the LM head.

    Runs only the decoder stack, so no full-vocabulary logits are built. ``position_ids`` (with no attention mask)
    mark packed sequences.
    """
    stack = decoder_stack(model)
    return stack(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state


@contextmanager
def captured_hidden_states(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the final hidden states ``(B, L, d)`` of every decoder-stack forward run inside the block."""
    found: list[Tensor] = []

    def keep(_module: nn.Module, _args: Any, output: Any) -> None:
        found.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = decoder_stack(model).register_forward_hook(keep)
    try:
        yield found
    finally:
        handle.remove()


@contextmanager
def head_on_first_rows(model: nn.Module, rows: int) -> Iterator[None]:
    """Inside the block, the LM head projects only the first ``rows`` rows of what it is given (the task rows): the
    anchor rows packed behind them need hidden states, not full-vocabulary logits. A forward that never calls the
    LM head as a module (a fused-loss kernel) is an error, not a silent change."""
    calls = []

    def first_rows(_module: nn.Module, args: tuple) -> tuple:
        calls.append(True)
        return (args[0][:rows], *args[1:])

    handle = unwrap(model).get_output_embeddings().register_forward_pre_hook(first_rows)
    try:
        yield
    finally:
        handle.remove()
    if not calls:
        raise LogitGuardError(
            "the model's forward never called its LM head module, so STR could not keep the packed anchor rows out of "
            "the logits; set str.anchor_pass: separate"
        )


def check_head_readable(model: nn.Module) -> None:
    """Refuse an LM head that STR cannot read as rows of one weight: one with LoRA adapters on it (STR would read
    the frozen rows without the adapter's update, and pin the wrong logits)."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise LogitGuardError("the model has no output embedding (LM head) for STR to read the safety-token rows of")
    if hasattr(head, "base_layer"):
        raise LogitGuardError(
            "LoRA on the LM head is not supported by STR (it reads the head's safety-token rows directly, without "
            "the adapter's update); leave lm_head out of lora.target_modules"
        )


def vocab_size(model: nn.Module) -> int:
    """Rows of the model's output layer (read from the module, so a sharded or partitioned weight does not hide it)."""
    head = unwrap(model).get_output_embeddings()
    return getattr(head, "out_features", None) or head.weight.shape[0]


@contextmanager
def head_available(model: nn.Module) -> Iterator[None]:
    """Inside the block, the LM head's weight is whole where STR reads its rows, whatever engine shards the model.

    * Plain, DDP: it always is.
    * FSDP2 (``fully_shard``) and FSDP1: the LM head belongs to the root unit (as Accelerate's auto-wrap leaves it),
      which stays unsharded from its forward to the end of its backward, when STR reads it. A head resharded after
      the forward (a unit of its own) reads as a ``DTensor`` shard: refused, never used as if it were the head.
    * DeepSpeed ZeRO-3: the partitioned weight is gathered for the block (``GatheredParameters``, read only): a
      frozen head (LoRA) is read whole; a trained one would miss STR's gradient, so that is refused.
    """
    weight = unwrap(model).get_output_embeddings().weight
    if type(weight).__name__ == "DTensor":
        raise LogitGuardError(
            "the LM head is a sharded DTensor where STR reads it (after the forward pass): leave lm_head in the root "
            "FSDP unit (fully_shard each decoder layer, then the whole model), as Accelerate's FSDP2 auto-wrap does"
        )
    if getattr(weight, "ds_id", None) is None:
        yield
        return
    if weight.requires_grad:
        raise LogitGuardError(
            "STR with a trained LM head under DeepSpeed ZeRO-3 is not supported (its gradient would miss the "
            "partitioned head); use LoRA (the head stays frozen) or ZeRO-2"
        )
    import deepspeed

    with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
        yield


def output_rows(model: nn.Module, ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Rows ``ids`` of the output embedding (all rows if None) and of its bias, if any."""
    head = unwrap(model).get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if ids is None:
        return weight, bias
    ids = ids.to(weight.device)
    return weight[ids], None if bias is None else bias[ids]


WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def weights_fingerprint(model: nn.Module, values: int = 4096) -> str:
    """Fingerprint of a model's own weights (LoRA adapters left out): every parameter's name, shape and leading
    values in bfloat16.

    bfloat16 makes the same checkpoint hash alike whether it was loaded in fp32 or bf16; another model, a merged or
    another fine-tuned one, changes its leading values and so its hash, even where it shares the LM head (a base
    model and its LoRA-aligned child). A PEFT model with any adapters hashes as its base. A sharded (FSDP2) weight is
    gathered (every rank must call this together); a DeepSpeed ZeRO-3 partition counts by its shape only.
    """

    def chunks():
        for name, p in unwrap(model).named_parameters():
            if "lora_" in name:
                continue
            for prefix in WRAPPER_PREFIXES:
                name = name.replace(prefix, "")
            if getattr(p, "ds_id", None) is not None:
                yield f"{name.replace('.base_layer', '')}:{tuple(p.ds_shape)}"
                continue
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            yield f"{name.replace('.base_layer', '')}:{tuple(full.shape)}"
            yield full.detach().flatten()[:values].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()

    return fingerprint(chunks())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off inside the block; the model's train/eval mode as it was afterwards (on every exit path)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def reference_mode(model: nn.Module) -> Iterator[None]:
    """The aligned model inside a PEFT model: adapters off, dropout off, no grad."""
    if not hasattr(model, "disable_adapter"):
        raise LogitGuardError(
            "the task-batch reference needs a PEFT model (its adapters disabled give the aligned model); "
            "for full fine-tuning use reference='anchors', whose reference values are cached before training"
        )
    with eval_mode(model), model.disable_adapter(), torch.no_grad():
        yield
