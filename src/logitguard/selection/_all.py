"""Gradient-based sample selection: drop the fine-tuning samples that would move the aligned model most.

After Bach, Nguyen, Le & Tran (arXiv 2604.17215), whose details are not public; the choices here:

* A sample's loss is its mean NLL over assistant tokens (as in SFT), and its gradient is taken with respect to
  the parameters that will be trained (the fresh LoRA adapters, or every Linear layer when fine-tuning fully),
  under the aligned model (adapters just initialised, so the model *is* the aligned one). LoRA's B starts at 0,
  so only B has a gradient, and that gradient is the dense weight gradient projected by the random A: a random
  projection that keeps norms up to a constant, so its norm ranks samples as the full gradient would.
* Per-sample gradients come from one forward and one backward of the summed per-sample losses: hooks on each
  trainable Linear layer see its input ``x`` (B, T, in) and output gradient ``g`` (B, T, out), and the per-sample
  weight gradient is ``g_bᵀ x_b``. Its squared norm and its dot product with a fixed direction are computed
  without materialising it when that is cheaper (``linear_sample_stats``). This is exact, costs about one
  training step per batch, and needs no ``vmap`` over the model (whose mask building is data-dependent).
* Two scores: ``gradient-norm`` = ‖∇θ loss_i‖; ``safety`` = −⟨∇θ loss_i, ĝ⟩ with ĝ the unit gradient of the NLL
  of the aligned model's refusals (the anchors): to first order, how much one SGD step on the sample raises the
  refusal loss. The highest ``fraction`` of scores is dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from logitguard.anchors import AnchorCache
from logitguard.data import IGNORE_INDEX, Messages, Overflow, collate, encode_chat, encode_limited
from logitguard.errors import LogitGuardError
from logitguard.io import atomic_write, ensure_writable_dir, write_json
from logitguard.refusal import is_refusal

Score = Literal["gradient-norm", "safety", "first-tokens", "refusal"]
SCORES: tuple[str, ...] = ("gradient-norm", "safety", "first-tokens", "refusal")
FIRST_TOKENS = 5  # response tokens the "first-tokens" score's loss covers (Qi et al.: safety lives there)


@dataclass(frozen=True)
class SelectionConfig:
    """What is dropped, and how samples are scored and encoded.

    Attributes:
        fraction: share of samples dropped, the highest scores (None: drop by ``threshold`` instead).
        score: ``gradient-norm`` (the companion paper's), ``safety`` (raises the refusal loss), ``first-tokens``
            (gradient norm of the first response tokens' NLL), or ``refusal``: the probability the aligned model
            gives the safety tokens at the first response position, i.e. how surely it would start a refusal
            where the sample's answer starts (a forward pass, no gradient); a sample that itself answers with a
            refusal that ends scores 0.
        threshold: drop every sample scoring at least this (e.g. 0.1 with ``refusal``: the aligned model gives
            starting a refusal at least a one-in-ten chance where the sample's answer starts).
    """

    fraction: float | None = 0.1
    score: Score = "gradient-norm"
    batch_size: int = 8
    max_length: int = 1024
    on_overflow: Overflow = "error"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.threshold is None):
            raise LogitGuardError("give exactly one of a fraction of samples to drop and a score threshold")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise LogitGuardError(f"fraction (share of samples to drop) must be in (0, 1), got {self.fraction}")
        if self.score not in SCORES:
            raise LogitGuardError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.batch_size <= 0 or self.max_length <= 0:
            raise LogitGuardError(f"batch_size and max_length must be > 0, got {self.batch_size} and {self.max_length}")


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


class PerSampleGradients:
    """Hooks that accumulate each sample's squared gradient norm (and dot with a direction) over a backward pass.

    ``direction`` maps ``"layer name"`` to ``(weight direction, bias direction or None)``. Use as a context
    manager around forward + ``backward`` of the *sum* of per-sample losses; then read ``sq_norm`` and ``dot``.
    """

    def __init__(self, model: nn.Module, direction: dict[str, tuple[Tensor, Tensor | None]] | None = None) -> None:
        self.layers = trainable_linears(model)
        self.direction = direction
        self.sq_norm: Tensor | None = None
        self.dot: Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> PerSampleGradients:
        self.sq_norm = self.dot = None
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
        if module.bias is not None and module.bias.requires_grad:
            bias_grad = grad.float().sum(1)
            sq_norm = sq_norm + bias_grad.pow(2).sum(1)
            if bias_dir is not None:
                dot = dot + bias_grad @ bias_dir.float()
        self.sq_norm = sq_norm if self.sq_norm is None else self.sq_norm + sq_norm
        self.dot = dot if self.dot is None else self.dot + dot


def first_labels(labels: Tensor, n: int) -> Tensor:
    """``labels`` ``(B, L)`` with every label after each row's first ``n`` set to ``IGNORE_INDEX``."""
    is_label = labels != IGNORE_INDEX
    return torch.where(is_label & (is_label.cumsum(1) <= n), labels, IGNORE_INDEX)


def first_response_mass(logits: Tensor, labels: Tensor, ids: Tensor) -> Tensor:
    """``(B,)`` probability of the safety tokens ``ids`` at each row's first response position.

    Args:
        logits: ``(B, L, V)`` the aligned model's logits.
        labels: ``(B, L)`` labels, ``-100`` off the response; position ``t`` predicts ``labels[:, t + 1]``.
        ids: ``(k,)`` safety-token ids.
    """
    is_label = labels[:, 1:] != IGNORE_INDEX
    if not bool(is_label.any(1).all()):
        raise LogitGuardError("a sample has no assistant tokens to score")
    first = is_label.float().argmax(1)
    rows = logits[torch.arange(len(logits), device=logits.device), first].float()
    return rows.softmax(-1)[:, ids.to(rows.device)].sum(-1)


def answers_with_refusal(messages: Messages) -> bool:
    """Whether the conversation's first assistant turn, the one the refusal score reads, is a refusal that ends."""
    first = next((m["content"] for m in messages if m["role"] == "assistant"), "")
    return is_refusal(first)


def _logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


def _mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """``(B,)`` each row's mean NLL over its label tokens (rows without labels raise)."""
    labels = labels[:, 1:]
    counts = (labels != IGNORE_INDEX).sum(1)
    if bool((counts == 0).any()):
        raise LogitGuardError("a sample has no assistant tokens to score")
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(1) / counts


def sample_losses(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """``(B,)`` each row's mean NLL over its label tokens (rows without labels raise)."""
    return _mean_nll(_logits(model, batch), batch["labels"])


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
    with scoring_mode(model), grads_set_aside(model):
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
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while scoring; the previous train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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


def score_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Iterable[tuple[str, Messages]],
    config: SelectionConfig,
    direction: dict[str, tuple[Tensor, Tensor | None]] | None = None,
    safety_ids: Tensor | None = None,
) -> Iterator[list[dict]]:
    """Score ``(where, conversation)`` samples in batches; yields each batch's records, in order.

    A record holds ``where``, ``tokens``, ``truncated``, ``loss``, then per score: ``grad_norm`` (gradient
    scores), ``safety`` (when ``direction`` is given: −⟨gradient, direction⟩), ``refusal`` (when ``safety_ids``
    are given: the safety-token mass at the first response position), and ``score`` (the one that ranks). Under
    the ``refusal`` score, a sample whose first answer is itself a refusal that ends (:func:`answers_with_refusal`)
    scores 0 and is marked ``answer_refuses``: it teaches what the aligned model would do, so selection never drops
    the refusals a user mixes in (SafeInstr).
    """
    if config.score == "safety" and direction is None:
        raise LogitGuardError("score 'safety' needs the safety direction (the gradient of the refusal loss)")
    if config.score == "refusal" and safety_ids is None:
        raise LogitGuardError("score 'refusal' needs the safety tokens")
    device = next(model.parameters()).device
    iterator = iter(samples)
    with scoring_mode(model), grads_set_aside(model):
        while chunk := list(islice(iterator, config.batch_size)):
            encoded = [encode_limited(tokenizer, m, config.max_length, config.on_overflow, w) for w, m in chunk]
            batch = collate([e for e, _ in encoded], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            values = _batch_scores(model, batch, config, direction, safety_ids)
            records = []
            for i, ((where, messages), (example, truncated)) in enumerate(zip(chunk, encoded, strict=True)):
                record = {"where": where, "tokens": len(example["input_ids"]), "truncated": truncated}
                record |= {key: float(value[i]) for key, value in values.items()}
                score = record[
                    {"gradient-norm": "grad_norm", "first-tokens": "grad_norm"}.get(config.score, config.score)
                ]
                if not math.isfinite(score):
                    raise LogitGuardError(f"{where}: the score is {score} (loss {record['loss']})")
                if config.score == "refusal" and answers_with_refusal(messages):
                    record["answer_refuses"], score = True, 0.0
                records.append(record | {"score": score})
            model.zero_grad(set_to_none=True)
            yield records


def _batch_scores(
    model: nn.Module,
    batch: dict[str, Tensor],
    config: SelectionConfig,
    direction: dict[str, tuple[Tensor, Tensor | None]] | None,
    safety_ids: Tensor | None,
) -> dict[str, Tensor]:
    """``(B,)`` values per record field for one batch: a forward pass, and a backward one for gradient scores."""
    if config.score == "refusal":
        with torch.no_grad():
            logits = _logits(model, batch)
            mass = first_response_mass(logits, batch["labels"], safety_ids)
            return {"loss": _mean_nll(logits, batch["labels"]), "refusal": mass}
    labels = first_labels(batch["labels"], FIRST_TOKENS) if config.score == "first-tokens" else batch["labels"]
    with PerSampleGradients(model, direction) as stats:
        logits = _logits(model, batch)
        losses = _mean_nll(logits, labels)
        losses.sum().backward()
    values = {"loss": losses.detach(), "grad_norm": stats.sq_norm.sqrt()}
    if direction is not None:
        values["safety"] = -stats.dot
    if safety_ids is not None:
        values["refusal"] = first_response_mass(logits.detach(), batch["labels"], safety_ids)
    return values


def keep_mask(scores: list[float], fraction: float | None, threshold: float | None = None) -> list[bool]:
    """False for the ``round(fraction · n)`` highest scores (ties: the later sample is dropped first), or for every
    score at least ``threshold``."""
    if threshold is not None:
        keep = [score < threshold for score in scores]
        if not any(keep):
            raise LogitGuardError(
                f"every one of the {len(scores)} samples scores at least {threshold}: none would be left"
            )
        return keep
    n_drop = round(fraction * len(scores))
    if n_drop >= len(scores):
        raise LogitGuardError(f"dropping a fraction {fraction} of {len(scores)} samples would leave none")
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i), reverse=True)
    keep = [True] * len(scores)
    for i in order[:n_drop]:
        keep[i] = False
    return keep


def parameters_fingerprint(model: nn.Module, trainable_only: bool = True) -> str:
    """Hash of the (trainable) parameters' names, shapes and leading values: the adapter initialisation, or
    with ``trainable_only=False`` the whole model, so scores of another model at the same path are not reused."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad or not trainable_only:
            digest.update(f"{name}:{tuple(p.shape)}".encode())
            digest.update(p.detach().flatten()[:4096].float().cpu().numpy().round(6).tobytes())
    return digest.hexdigest()[:16]


def content_fingerprint(content: object) -> str:
    """Hash of JSON-serialisable content (the conversations being scored): reordered or edited data differs."""
    return hashlib.sha256(json.dumps(content, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """Hash of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def run_selection(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Iterable[tuple[str, Messages]],
    config: SelectionConfig,
    scores_path: str | Path,
    identity: dict,
    direction: dict[str, tuple[Tensor, Tensor | None]] | None = None,
    total: int | None = None,
    safety_ids: Tensor | None = None,
) -> list[bool]:
    """Score every sample, resumably, and write the scores with their keep/drop verdicts; returns the mask.

    Records are appended to ``SCORES.partial`` batch by batch (its first line holds ``identity``: what the
    scores depend on); a restart with the same identity skips the samples already scored. At the end
    ``SCORES`` (one record per sample, with its ``index`` and ``kept``) and ``SCORES.summary.json`` are written
    atomically and the partial file is removed. If both exist for the same identity, they are reused.
    ``identity`` should hold content hashes (:func:`content_fingerprint`, :func:`file_fingerprint`,
    :func:`parameters_fingerprint`), never paths alone: data edited in place, or another model at the same
    path, must not reuse stale scores.
    """
    scores_path = Path(scores_path)
    identity = {**identity, "score": config.score, "max_length": config.max_length, "on_overflow": config.on_overflow}
    if safety_ids is not None:
        identity["safety_ids"] = safety_ids.tolist()
    if config.score == "refusal":  # scores written before refusing answers scored 0 are not reused
        identity["refusing_answers"] = "score 0"
    summary_path = scores_path.with_name(scores_path.name + ".summary.json")
    reused = _finished_scores(scores_path, summary_path, identity)
    if reused is not None:
        keep = keep_mask(reused, config.fraction, config.threshold)
    else:
        ensure_writable_dir(scores_path.parent)
        partial = scores_path.with_name(scores_path.name + ".partial")
        done = _resume(partial, identity)
        start = time.perf_counter()
        with partial.open("a", encoding="utf-8") as f:
            if not done:
                f.write(json.dumps({"identity": identity}) + "\n")
            progress = tqdm(total=total, initial=len(done), desc="scoring samples", unit="sample")
            for records in score_samples(
                model, tokenizer, islice(samples, len(done), None), config, direction, safety_ids
            ):
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()
                done += [r["score"] for r in records]
                progress.update(len(records))
            progress.close()
        if not done:
            raise LogitGuardError("no samples to select from")
        keep = keep_mask(done, config.fraction, config.threshold)
        _write_final(partial, scores_path, keep)
        partial.unlink()
        summary = {"identity": identity, "samples": len(done), "seconds": time.perf_counter() - start}
        write_json(summary_path, summary)
    kept_scores = [s for s, k in zip(reused or done, keep, strict=True) if k]
    rule = (
        f"the {config.fraction:.1%} with the highest {config.score} scores, above {max(kept_scores):.4g}"
        if config.fraction is not None
        else f"those with {config.score} scores of at least {config.threshold:.4g}"
    )
    print(f"selection: kept {sum(keep)} of {len(keep)} samples (dropped {rule}); scores in {scores_path}")
    return keep


def _finished_scores(scores_path: Path, summary_path: Path, identity: dict) -> list[float] | None:
    if not (scores_path.is_file() and summary_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("identity") != identity:
        raise LogitGuardError(
            f"{scores_path} holds scores of another model, data or scoring setting ({summary_path}); "
            "choose another scores path or delete it"
        )
    with scores_path.open(encoding="utf-8") as f:
        return [json.loads(line)["score"] for line in f]


def _resume(partial: Path, identity: dict) -> list[float]:
    """Scores already in ``partial`` (a torn last line is cut off); raises if they belong to other settings."""
    if not partial.is_file():
        return []
    with partial.open("r+", encoding="utf-8") as f:
        lines, valid_bytes = [], 0
        for line in f:
            if not line.endswith("\n"):
                break
            lines.append(line)
            valid_bytes += len(line.encode("utf-8"))
        f.truncate(valid_bytes)
    if not lines:
        return []
    if json.loads(lines[0]).get("identity") != identity:
        raise LogitGuardError(
            f"{partial} holds partial scores of another model, data or scoring setting; "
            "delete it to start over, or run with the settings it was started with"
        )
    print(f"resuming selection: {len(lines) - 1} samples already scored in {partial}")
    return [json.loads(line)["score"] for line in lines[1:]]


def _write_final(partial: Path, scores_path: Path, keep: list[bool]) -> None:
    def write(tmp: Path) -> None:
        with partial.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            next(src)
            for i, line in enumerate(src):
                dst.write(json.dumps({"index": i, **json.loads(line), "kept": keep[i]}) + "\n")

    atomic_write(scores_path, write)


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
