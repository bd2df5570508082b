"""Safety Token Regularization penalties: pure functions of tensors.

No model, tokenizer or config in here. Shapes use ``N`` for any number of
leading (batch, sequence) dimensions and ``k`` for the number of safety tokens.
Every penalty accumulates in fp32 whatever the input dtype, ignores positions
where ``mask`` is False and returns exactly 0 (not NaN) when no position is
selected.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from logitguard.errors import LogitGuardError

Reduction = Literal["mean", "sum", "none"]


def salient_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Logits of k tokens only, without building full-vocabulary logits.

    Args:
        hidden: ``(*N, d)`` final hidden states (after the last norm).
        weight: ``(k, d)`` rows of the output embedding for the safety tokens.
        bias: optional ``(k,)`` output bias rows.

    Returns:
        ``(*N, k)`` logits, equal to ``(hidden @ W_out.T)[..., ids]``.
    """
    logits = hidden @ weight.to(hidden.dtype).T
    return logits if bias is None else logits + bias.to(logits.dtype)


MASKED_LOGIT = -1e4  # a logit whose probability is 0 in fp32 after any realistic normaliser


def with_target_column(logits: Tensor, target_logits: Tensor, target_is_salient: Tensor) -> Tensor:
    """The k safety-token logits plus one column for the sequence's own next token.

    Pinning the k safety tokens alone leaves a refusal's other tokens free: at the refusal's last position
    the end-of-turn token, and a compliant "Step" that replaces it, share the rest of the vocabulary. The
    target column gives the next token of the teacher-forced refusal its own bucket, so the penalty covers the
    refusal to its end. Where that token is already a safety token the column is masked (probability 0 in
    both model and reference), so no token is counted twice.

    Args:
        logits: ``(*N, k)`` safety-token logits.
        target_logits: ``(*N,)`` logit of the next token at the same positions.
        target_is_salient: ``(*N,)`` bool, True where the next token is one of the k safety tokens.

    Returns:
        ``(*N, k + 1)`` logits, in ``logits``' dtype.
    """
    target = torch.where(target_is_salient, MASKED_LOGIT, target_logits.to(logits.dtype))
    return torch.cat([logits, target.unsqueeze(-1)], dim=-1)


def salient_log_probs(logits: Tensor, logsumexp_all: Tensor) -> Tensor:
    """Full-vocabulary log-probabilities of m distinct tokens plus one bucket for all other tokens.

    Args:
        logits: ``(*N, m)`` logits of the tokens (the k safety tokens, and possibly a target column).
        logsumexp_all: ``(*N,)`` log-sum-exp of the full-vocabulary logits at the same positions.

    Returns:
        ``(*N, m + 1)`` fp32 log-probabilities; the last column is ``log(1 - sum of the m probabilities)``.
        A column masked with :data:`MASKED_LOGIT` keeps that value (probability 0 whatever the normaliser).
        A penalty on them also sees the rest of the vocabulary (a compliant "Sure" overtaking a refusal "I")
        while only k rows of the output embedding take part beyond the normaliser.
    """
    log_p = logits.float() - logsumexp_all.float().unsqueeze(-1)
    log_p = torch.where(logits.float() <= MASKED_LOGIT, MASKED_LOGIT, log_p)  # a masked column stays masked
    salient_mass = log_p.logsumexp(dim=-1).clamp(max=-1e-6)
    rest = torch.log(-torch.expm1(salient_mass))
    return torch.cat([log_p, rest.unsqueeze(-1)], dim=-1)


def reduce_masked(per_position: Tensor, mask: Tensor, reduction: Reduction) -> Tensor:
    """Masked sum or mean of ``(*N,)`` values in fp32 (0 when the mask is empty), or with ``"none"`` the ``(*N,)``
    values themselves, 0 where the mask is False."""
    mask = mask.to(torch.bool)
    masked = torch.where(mask, per_position.float(), 0.0)
    if reduction == "none":
        return masked
    if reduction == "sum":
        return masked.sum()
    if reduction == "mean":
        return masked.sum() / mask.sum().clamp(min=1)
    raise LogitGuardError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def logit_mse(logits: Tensor, ref_logits: Tensor, mask: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Squared deviation of the safety-token logits from the reference.

    Args:
        logits: ``(*N, k)`` safety-token logits of the model being trained.
        ref_logits: ``(*N, k)`` reference logits (treated as constants).
        mask: ``(*N,)`` bool, True where the penalty applies.
        reduction: ``"mean"`` over selected positions, ``"sum"`` (for callers that normalise by a global
            token count themselves), or ``"none"`` (``(*N,)`` per position, 0 where ``mask`` is False).

    Returns:
        Scalar fp32: per position the mean over k of ``(z - z_ref)^2``, reduced.
    """
    per_position = (logits.float() - ref_logits.detach().float()).pow(2).mean(dim=-1)
    return reduce_masked(per_position, mask, reduction)


def salient_kl(
    logits: Tensor,
    ref_logits: Tensor,
    mask: Tensor,
    reduction: Reduction = "mean",
    temperature: float = 1.0,
) -> Tensor:
    """KL(reference || model) of the softmax restricted to the k safety tokens.

    Args:
        logits: ``(*N, k)`` safety-token logits of the model being trained.
        ref_logits: ``(*N, k)`` reference logits (treated as constants).
        mask: ``(*N,)`` bool, True where the penalty applies.
        reduction: ``"mean"`` over selected positions, ``"sum"`` or ``"none"`` (per position).
        temperature: softens both distributions; the result is scaled by
            ``temperature**2`` so gradients keep their size (as in distillation).

    Returns:
        Scalar fp32 KL divergence, reduced over selected positions.
    """
    if temperature <= 0:
        raise LogitGuardError(f"temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(ref_logits.detach().float() / temperature, dim=-1)
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    per_position = (log_q.exp() * (log_q - log_p)).sum(dim=-1) * temperature**2
    return reduce_masked(per_position, mask, reduction)


class Penalty(Protocol):
    def __call__(self, logits: Tensor, ref_logits: Tensor, mask: Tensor, reduction: Reduction = "mean") -> Tensor: ...


PENALTIES: dict[str, Penalty] = {"mse": logit_mse, "kl": salient_kl}


def get_penalty(name: str) -> Penalty:
    """The penalty function called ``name``; a clear error for unknown names."""
    try:
        return PENALTIES[name]
    except KeyError:
        raise LogitGuardError(f"unknown penalty {name!r}; choose one of {sorted(PENALTIES)}") from None
