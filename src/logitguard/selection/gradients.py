"""Exact per-sample gradient statistics from hooks on the trainable Linear layers, and the refusal-loss direction."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.model_access import decoder_stack, eval_mode
from logitguard.data.chat import IGNORE_INDEX, collate, encode_chat
from logitguard.errors import LogitGuardError


def linear_sample_stats(inputs: Tensor, grad_outputs: Tensor, direction: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-sample squared norm of a Linear layer's weight gradient, and its dot product with ``direction``.

    Args:
        inputs: ``(B, T, in)`` the layer's inputs.
        grad_outputs: ``(B, T, out)`` the loss gradient at the layer's outputs.
        direction: ``(out, in)`` or None (then the dot products are 0).

    Returns:
        ``(B,)`` fp32 squared norms of ``G_b = grad_outputs_bᵀ inputs_b``, ``(B,)`` fp32 ``⟨G_b, direction⟩``.
    """
    x, g = inputs.float(), grad_outputs.float()
    steps, d_in, d_out = x.shape[1], x.shape[2], g.shape[2]
    if steps * steps < d_in * d_out:  # Gram matrices are smaller than the per-sample gradients
        sq_norm = (torch.bmm(x, x.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        dot = (g @ direction.float() * x).sum((1, 2)) if direction is not None else x.new_zeros(x.shape[0])
        return sq_norm, dot
    grads = torch.einsum("bto,bti->boi", g, x)
    dot = (grads * direction.float()).sum((1, 2)) if direction is not None else x.new_zeros(x.shape[0])
    return grads.pow(2).sum((1, 2)), dot


def trainable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers whose weight is trained; warns about trainable parameters the scores cannot see."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad}
    if not layers:
        raise LogitGuardError("the model has no trainable Linear layer (LoRA adapters or Linear weights) to score with")
    covered = {id(p) for m in layers.values() for p in m.parameters(recurse=False)}
    others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if others:
        warnings.warn(
            f"selection scores ignore {len(others)} trainable parameters outside Linear layers ({others[:3]}...)",
            stacklevel=2,
        )
    return layers


Gradient = Literal["dense", "trainable"]
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The decoder layer a module belongs to (``model.layers.3.self_attn.q_proj`` -> 3), or None (the LM head)."""
    found = _LAYER.search(f".{name}.")
    return int(found.group(1)) if found else None


def scored_linears(
    model: nn.Module, gradient: Gradient = "dense", last_layers: int | None = None
) -> dict[str, nn.Linear]:
    """The Linear layers whose per-sample weight gradients a score covers.

    ``"trainable"``: the weights that will be trained (LoRA's A and B, or every Linear layer when fine-tuning
    fully). ``"dense"``: under LoRA, the frozen weights the adapters adapt (the gradient full fine-tuning of those
    layers would follow; LoRA's B starts at 0, so A has no gradient and B's is the dense one seen through the random
    A); without LoRA the same as ``"trainable"``. ``last_layers``: only the Linear layers of the last N decoder
    layers (the backward pass then stops there: :func:`gradient_entry`).
    """
    adapted = {
        name: m.base_layer for name, m in model.named_modules() if isinstance(getattr(m, "base_layer", None), nn.Linear)
    }
    layers = adapted if gradient == "dense" and adapted else trainable_linears(model)
    if last_layers is not None:
        first = decoder_layers(model) - last_layers
        layers = {n: m for n, m in layers.items() if (layer_index(n) or -1) >= first}
        if not layers:
            raise LogitGuardError(f"no scored Linear layer in the last {last_layers} decoder layers")
    return layers


def decoder_layers(model: nn.Module) -> int:
    """How many decoder layers the model has."""
    return len(decoder_stack(model).layers)


@contextmanager
def gradient_entry(model: nn.Module, first_layer: int = 0) -> Iterator[None]:
    """Inside the block, the backward pass starts at decoder layer ``first_layer``: its input hidden states are
    detached and require grad, so frozen weights from there on see their output gradients (dense scores) and no
    backward runs through the layers before it (the last-layers proxy costs a forward and a short backward)."""

    def enter(_module: nn.Module, args: tuple, kwargs: dict):
        if torch.is_grad_enabled():
            if args:
                return (args[0].detach().requires_grad_(), *args[1:]), kwargs
            kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
        return args, kwargs

    handle = decoder_stack(model).layers[first_layer].register_forward_pre_hook(enter, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class PerSampleGradients:
    """Hooks that accumulate each sample's squared gradient norm (and dot with a direction) over a backward pass.

    ``layers`` (default: the trainable Linear layers) are the layers whose weight gradients count, with their
    biases when these are trained or ``frozen_biases`` (dense scores); ``direction`` maps a layer name to
    ``(weight direction, bias direction or None)``. Use as a context manager
    around forward + ``backward`` of the *sum* of per-sample losses; then read ``sq_norm`` (every layer together),
    ``layer_sq_norms`` (each layer's) and ``dot``.
    """

    def __init__(
        self,
        model: nn.Module,
        direction: dict[str, tuple[Tensor, Tensor | None]] | None = None,
        layers: dict[str, nn.Linear] | None = None,
        frozen_biases: bool = False,
    ) -> None:
        self.layers = layers if layers is not None else trainable_linears(model)
        self.frozen_biases = frozen_biases
        self.direction = direction
        self.layer_sq_norms: dict[str, Tensor] = {}
        self.dot: Tensor | None = None
        self._handles: list = []

    @property
    def sq_norm(self) -> Tensor | None:
        """``(B,)`` each sample's squared gradient norm over every scored layer (None before a backward pass)."""
        return sum(self.layer_sq_norms.values()) if self.layer_sq_norms else None

    def __enter__(self) -> PerSampleGradients:
        self.layer_sq_norms, self.dot = {}, None
        self._handles = [m.register_forward_hook(self._forward_hook(name)) for name, m in self.layers.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_hook(self, name: str) -> Callable:
        def hook(module: nn.Linear, args: tuple, output: Tensor) -> None:
            # Under activation checkpointing the no-grad first pass (reentrant) or the recomputation
            # (non-reentrant) produces outputs whose gradient is never taken: only one call counts.
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            x = args[0].detach()
            output.register_hook(lambda grad: self._add(name, module, x, grad))

        return hook

    def _add(self, name: str, module: nn.Linear, x: Tensor, grad: Tensor) -> None:
        x, grad = x.reshape(x.shape[0], -1, x.shape[-1]), grad.reshape(grad.shape[0], -1, grad.shape[-1])
        weight_dir, bias_dir = self.direction[name] if self.direction is not None else (None, None)
        sq_norm, dot = linear_sample_stats(x, grad, weight_dir)
        if module.bias is not None and (module.bias.requires_grad or self.frozen_biases):
            bias_grad = grad.float().sum(1)
            sq_norm = sq_norm + bias_grad.pow(2).sum(1)
            if bias_dir is not None:
                dot = dot + bias_grad @ bias_dir.float()
        earlier = self.layer_sq_norms.get(name)
        self.layer_sq_norms[name] = sq_norm if earlier is None else earlier + sq_norm
        self.dot = dot if self.dot is None else self.dot + dot


def first_labels(labels: Tensor, n: int) -> Tensor:
    """``labels`` ``(B, L)`` with every label after each row's first ``n`` set to ``IGNORE_INDEX``."""
    is_label = labels != IGNORE_INDEX
    return torch.where(is_label & (is_label.cumsum(1) <= n), labels, IGNORE_INDEX)


def sample_logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def mean_label_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """``(B,)`` each row's mean NLL over its label tokens (rows without labels raise)."""
    labels = labels[:, 1:]
    counts = (labels != IGNORE_INDEX).sum(1)
    if bool((counts == 0).any()):
        raise LogitGuardError("a sample has no assistant tokens to score")
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(1) / counts


def sample_losses(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """``(B,)`` each row's mean NLL over its label tokens (rows without labels raise)."""
    return mean_label_nll(sample_logits(model, batch), batch["labels"])


def safety_direction(
    model: nn.Module, refusals: dict[str, Tensor], batch_size: int = 8
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Unit gradient of the NLL of refusal tokens (``refusals``: a collated batch with labels) per trainable layer.

    The NLL is the mean over all refusal tokens; the direction is normalised over all layers together.
    """
    layers = trainable_linears(model)
    params = [p for m in layers.values() for p in (m.weight, m.bias) if p is not None and p.requires_grad]
    n_tokens = int((refusals["labels"][:, 1:] != IGNORE_INDEX).sum())
    if n_tokens == 0:
        raise LogitGuardError("the refusals hold no refusal tokens to take the safety gradient from")
    device = next(model.parameters()).device
    with eval_mode(model), grads_set_aside(model):
        for start in range(0, refusals["input_ids"].shape[0], batch_size):
            rows = {k: v[start : start + batch_size].to(device) for k, v in refusals.items()}
            counts = (rows["labels"][:, 1:] != IGNORE_INDEX).sum(1)
            ((sample_losses(model, rows) * counts).sum() / n_tokens).backward()
        grads = [torch.zeros_like(p, dtype=torch.float32) if p.grad is None else p.grad.float() for p in params]
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    if float(total) == 0.0:
        raise LogitGuardError("the safety gradient is zero: the trainable parameters cannot change the refusals")
    unit = iter(g / total for g in grads)
    return {
        name: (next(unit), next(unit) if m.bias is not None and m.bias.requires_grad else None)
        for name, m in layers.items()
    }


@contextmanager
def grads_set_aside(model: nn.Module) -> Iterator[None]:
    """Backward passes inside leave every ``.grad`` of ``model`` as it was before.

    (Scoring needs ``backward()``: ``torch.autograd.grad`` fails under reentrant activation checkpointing.)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


def refusal_batch(refusals: Iterable[tuple[str, str]], tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
    """``(harmful prompt, refusal)`` pairs as one collated batch with the refusal tokens as labels."""
    encoded = [encode_chat(tokenizer, p, r) for p, r in refusals]
    if not encoded:
        raise LogitGuardError("no refusals to take the safety gradient from")
    return collate(encoded, tokenizer.pad_token_id)


def anchor_refusal_batch(anchors: AnchorCache) -> dict[str, Tensor]:
    """The anchor cache's teacher-forced refusals as a batch whose labels are the refusal tokens."""
    labels = torch.full_like(anchors.input_ids, IGNORE_INDEX)
    labels[:, 1:] = torch.where(anchors.target_mask[:, :-1], anchors.input_ids[:, 1:], IGNORE_INDEX)
    return {"input_ids": anchors.input_ids, "attention_mask": anchors.attention_mask, "labels": labels}
