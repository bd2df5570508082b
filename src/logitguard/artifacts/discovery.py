"""Safety-token discovery and the versioned JSON artifact it produces.

A token is *salient* when the aligned model makes it much more probable while
it refuses than while it answers ordinary benign requests. Both kinds of
response are teacher-forced; the score of token v is

    score(v) = mean_t p(v | refusal prefix_t) - mean_t p(v | benign prefix_t)

a difference of mean probabilities (not a log-ratio), so tokens that carry
real probability mass in refusals ("I", "cannot", "sorry") rank first and rare
tokens with large ratios but no mass do not.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from logitguard.core.model_access import eval_mode
from logitguard.core.safety_tokens import SafetyTokens, tokenizer_fingerprint
from logitguard.data.chat import IGNORE_INDEX, collate, encode_chat
from logitguard.errors import LogitGuardError


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of special tokens, chat-role markers added as special tokens included."""
    added = [i for i, token in tokenizer.added_tokens_decoder.items() if token.special]
    return sorted(set(tokenizer.all_special_ids) | set(added))


def score_tokens(refusal_probs: Tensor, benign_probs: Tensor) -> Tensor:
    """``(V,)`` salience scores from ``(V,)`` mean next-token probabilities in refusals and benign answers."""
    return refusal_probs.float() - benign_probs.float()


def top_k_tokens(scores: Tensor, k: int, exclude: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
    """Ids and scores of the ``k`` best tokens, never choosing an id in ``exclude``."""
    vocab = scores.numel()
    if not 0 < k <= vocab - len(set(exclude)):
        raise LogitGuardError(
            f"k must be between 1 and the usable vocabulary size {vocab - len(set(exclude))}, got {k}"
        )
    masked = scores.float().clone()
    if exclude:
        masked[torch.tensor(sorted(set(exclude)), dtype=torch.long)] = float("-inf")
    values, ids = masked.topk(k)
    return ids, values


@torch.no_grad()
def mean_response_probs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
    desc: str = "scoring",
) -> Tensor:
    """``(V,)`` next-token distribution averaged over every response position of teacher-forced ``pairs``."""
    if not pairs:
        raise LogitGuardError(f"{desc}: no (prompt, response) pairs given")
    with eval_mode(model):
        device = next(model.parameters()).device
        total, count = None, 0
        for start in tqdm(range(0, len(pairs), batch_size), desc=desc, leave=False):
            chunk = [encode_chat(tokenizer, p, r) for p, r in pairs[start : start + batch_size]]
            batch = {key: t.to(device) for key, t in collate(chunk, tokenizer.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            positions = batch["labels"][:, 1:] != IGNORE_INDEX
            probs = logits[:, :-1][positions].float().softmax(dim=-1)
            total = probs.sum(0) if total is None else total + probs.sum(0)
            count += probs.shape[0]
    return total / count


MIN_CONTRAST = 0.005  # the best token must be half a point more probable in refusals than in answers


def warn_if_no_contrast(scores: Tensor, best: str) -> None:
    """Warn when the discovered tokens do not tell refusals from answers (a model that does not refuse, or
    refusals it does not make its own): STR would then pin tokens that say nothing about refusing."""
    if float(scores[0]) < MIN_CONTRAST:
        warnings.warn(
            f"the safety tokens barely tell refusals from answers: the best one ({best!r}) is only "
            f"{float(scores[0]):.4f} more probable in refusals than in benign answers; is this an aligned model that "
            "refuses? STR would pin tokens that say nothing about refusing",
            stacklevel=3,
        )
    elif (weak := int((scores <= 0).sum())) > 0:
        warnings.warn(
            f"{weak} of the {len(scores)} safety tokens are no more probable in refusals than in benign answers; "
            "a smaller k keeps only tokens that mark refusals",
            stacklevel=3,
        )


def discover_safety_tokens(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    refusals: Sequence[tuple[str, str]],
    benign: Sequence[tuple[str, str]],
    k: int = 32,
    batch_size: int = 16,
) -> SafetyTokens:
    """Rank tokens by how much more probable the aligned model makes them in refusals than in benign answers.

    Args:
        refusals: (harmful prompt, the aligned model's refusal) pairs.
        benign: (benign prompt, the aligned model's ordinary answer) pairs.
        k: number of tokens to keep. Special tokens are never chosen.
    """
    vocab = len(tokenizer)
    if not 0 < k <= vocab:
        raise LogitGuardError(f"k must be between 1 and the vocabulary size {vocab}, got {k}")
    p_refusal = mean_response_probs(model, tokenizer, refusals, batch_size, "refusals")
    p_benign = mean_response_probs(model, tokenizer, benign, batch_size, "benign answers")
    scores = score_tokens(p_refusal, p_benign)[:vocab]
    ids, values = top_k_tokens(scores, k, exclude=special_ids(tokenizer))
    warn_if_no_contrast(values, tokenizer.decode([int(ids[0])]))
    return SafetyTokens(
        ids=ids.tolist(),
        tokens=[tokenizer.decode([i]) for i in ids.tolist()],
        scores=[round(v, 6) for v in values.tolist()],
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        method={
            "score": "mean p(refusal) - mean p(benign), teacher-forced response positions",
            "n_refusals": len(refusals),
            "n_benign": len(benign),
            "excluded": "special tokens",
        },
    )
