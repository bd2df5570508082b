"""Peer methods as pure functions, for side-by-side comparison with STR.

* full-vocabulary KL to the reference model (what STR avoids paying for);
* Qi et al. 2024, token-wise constrained SFT ("Safety Alignment Should Be Made More
  Than Just a Few Tokens Deep"): a sigmoid-bounded log-likelihood ratio to the
  aligned model per token, with a larger β on the first response tokens;
* SafeInstr: a few percent of (harmful prompt, refusal) pairs mixed into the task data.

The losses are pure functions; :class:`ConstrainedSFTTrainer` is the thin ``transformers.Trainer`` adapter of
the constrained one, so the peers train through the same host as STR. Shapes use ``B`` rows, ``L`` positions,
``n`` selected (label) positions and ``V`` the vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, Trainer

from logitguard.core.model_access import eval_mode, final_hidden_states, output_rows
from logitguard.core.penalties import Reduction, reduce_masked
from logitguard.core.safety_tokens import SafetyTokens, tokenizer_fingerprint
from logitguard.core.step import trainer_reductions
from logitguard.data.chat import IGNORE_INDEX, collate
from logitguard.errors import LogitGuardError

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


def constrained_sft_loss(logits: Tensor, labels: Tensor, ref_log_probs: Tensor) -> tuple[Tensor, Tensor]:
    """Token-wise constrained SFT over a batch: the summed loss and the label-token count.

    Args:
        logits: ``(B, L, V)`` the model's logits.
        labels: ``(B, L)`` token ids, ``-100`` off the responses.
        ref_log_probs: ``(B, L)`` the aligned model's log-probability of each label token at that token's
            position (:func:`label_log_probs`, computed once before training).
    """
    positions = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][positions]
    log_probs = logits[:, :-1][positions].float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    offsets = (positions.cumsum(1) - 1)[positions]  # each label token's position within its row's response
    ref = ref_log_probs[:, 1:][positions]
    mask = torch.ones_like(targets, dtype=torch.bool)
    return constrained_nll(log_probs, ref, response_betas(offsets), mask, "sum"), positions.sum()


@torch.no_grad()
def label_log_probs(
    model: nn.Module, encoded: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int = 32
) -> list[list[float]]:
    """Per example, the model's log-probability of each label token at that token's position (0 elsewhere).

    Computed once before training for token-wise constrained SFT, so no reference model is needed later.
    """
    with eval_mode(model):
        device = next(model.parameters()).device
        weight, bias = output_rows(model)
        result = []
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])[:, :-1]
            log_probs = F.linear(hidden, weight, bias).float().log_softmax(-1)
            labels = batch["labels"][:, 1:]
            picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != IGNORE_INDEX)
            for row, example in zip(picked, rows, strict=True):
                result.append([0.0, *row[: len(example["input_ids"]) - 1].tolist()])
    return result


class ConstrainedSFTTrainer(Trainer):
    """``transformers.Trainer`` whose loss is token-wise constrained SFT (Qi et al. 2024), a peer of STR.

    Each training row needs ``ref_log_probs`` (:func:`label_log_probs` of the aligned model, padded by
    :func:`~logitguard.data.chat.collate`). The loss is the batch's sum over label tokens as its share of the step's
    mean, scaled as STR's host scales its terms (:func:`~logitguard.core.step.trainer_reductions`), so gradient
    accumulation and several processes give one big batch's update.
    """

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        total, _ = constrained_sft_loss(outputs.logits, inputs["labels"], inputs["ref_log_probs"])
        loss = trainer_reductions(self, inputs["labels"], num_items_in_batch).share(total)
        return (loss, outputs) if return_outputs else loss


def full_vocabulary_tokens(tokenizer: PreTrainedTokenizerBase) -> SafetyTokens:
    """Every token as a "safety token": STR's task-reference term then is a full-vocabulary KL (a peer method)."""
    ids = list(range(len(tokenizer)))
    return SafetyTokens(ids, [""] * len(ids), [0.0] * len(ids), tokenizer_fingerprint(tokenizer), {"all": True})


def mix_safety_examples(task: Sequence[T], safety: Sequence[T], fraction: float, seed: int = 0) -> list[T]:
    """SafeInstr: the task examples plus ``fraction`` of their number drawn from ``safety``, shuffled.

    A fraction of 0 returns the task examples unchanged (same order).
    """
    if not 0 <= fraction < 1:
        raise LogitGuardError(f"safety fraction must be in [0, 1), got {fraction}")
    rng = random.Random(seed)
    n = round(fraction * len(task))
    if n == 0:
        return list(task)
    if n > len(safety):
        raise LogitGuardError(f"{n} safety examples needed for fraction {fraction}, only {len(safety)} given")
    mixed = list(task) + rng.sample(list(safety), n)
    rng.shuffle(mixed)
    return mixed
