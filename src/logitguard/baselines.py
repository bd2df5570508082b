"""Peer methods as pure functions, for side-by-side comparison with STR.

* full-vocabulary KL to the reference model (what STR avoids paying for);
* Qi et al. 2024, token-wise constrained SFT ("Safety Alignment Should Be Made More
  Than Just a Few Tokens Deep"): a sigmoid-bounded log-likelihood ratio to the
  aligned model per token, with a larger β on the first response tokens;
* SafeInstr: a few percent of (harmful prompt, refusal) pairs mixed into the task data.

Shapes use ``n`` for selected (label) positions and ``V`` for the vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from logitguard.penalties import Reduction, reduce_masked

T = TypeVar("T")


def full_vocab_kl(logits: Tensor, ref_logits: Tensor, mask: Tensor, reduction: Reduction = "mean") -> Tensor:
    """KL(reference || model) over the whole vocabulary, fp32.

    Args:
        logits: ``(n, V)`` logits of the model being trained.
        ref_logits: ``(n, V)`` reference logits (constants).
        mask: ``(n,)`` bool, True where the penalty applies.
    """
    log_q = F.log_softmax(ref_logits.detach().float(), dim=-1)
    log_p = F.log_softmax(logits.float(), dim=-1)
    return reduce_masked((log_q.exp() * (log_q - log_p)).sum(-1), mask, reduction)


def response_betas(
    offsets: Tensor, first: float = 0.5, early: float = 2.0, late: float = 0.1, early_until: int = 5
) -> Tensor:
    """β per position from its ``(n,)`` 0-based offset in the response: ``first`` for the first token,
    ``early`` up to ``early_until``, ``late`` after (Qi et al. 2024 weigh the first tokens most)."""
    betas = torch.full(offsets.shape, late, dtype=torch.float32, device=offsets.device)
    betas[offsets < early_until] = early
    betas[offsets == 0] = first
    return betas


def constrained_nll(
    log_probs: Tensor, ref_log_probs: Tensor, betas: Tensor, mask: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    """Token-wise constrained SFT: ``-(2/β) log σ(β (log p − log p_ref))`` per label token.

    Its gradient is ``2 (1 − σ(β Δ))`` times the plain NLL gradient: once the
    model's log-probability of a token exceeds the aligned model's by a margin,
    that token stops pulling (small β: like SFT; large β: held near the reference).

    Args:
        log_probs: ``(n,)`` log-probabilities of the label tokens under the model being trained.
        ref_log_probs: ``(n,)`` the aligned model's (precomputed once, constants).
        betas: ``(n,)`` positive β per position (:func:`response_betas`).
        mask: ``(n,)`` bool.
    """
    delta = log_probs.float() - ref_log_probs.detach().float()
    betas = betas.float()
    return reduce_masked(-2.0 / betas * F.logsigmoid(betas * delta), mask, reduction)


def mix_safety_examples(task: Sequence[T], safety: Sequence[T], fraction: float, seed: int = 0) -> list[T]:
    """SafeInstr: the task examples plus ``fraction`` of their number drawn from ``safety``, shuffled.

    A fraction of 0 returns the task examples unchanged (same order).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"safety fraction must be in [0, 1), got {fraction}")
    rng = random.Random(seed)
    n = round(fraction * len(task))
    if n == 0:
        return list(task)
    if n > len(safety):
        raise ValueError(f"{n} safety examples needed for fraction {fraction}, only {len(safety)} given")
    mixed = list(task) + rng.sample(list(safety), n)
    rng.shuffle(mixed)
    return mixed
