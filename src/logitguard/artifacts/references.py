"""Anchor references: teacher-force the aligned model's refusals through it once and keep its logits there."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from logitguard.core.anchor_cache import AnchorCache, next_tokens
from logitguard.core.model_access import eval_mode, final_hidden_states, output_rows, weights_fingerprint
from logitguard.core.penalties import salient_logits
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.data.chat import IGNORE_INDEX, collate, encode_chat
from logitguard.errors import LogitGuardError


def build_anchor_cache(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    refusals: Sequence[tuple[str, str]],
    safety_tokens: SafetyTokens,
    batch_size: int = 32,
) -> AnchorCache:
    """Teacher-force ``(harmful prompt, refusal)`` pairs through the aligned model and keep its safety-token logits."""
    if not refusals:
        raise LogitGuardError("no anchor refusals given: the aligned model refused none of the harmful prompts")
    safety_tokens.check_tokenizer(tokenizer)
    batch = collate([encode_chat(tokenizer, p, r) for p, r in refusals], tokenizer.pad_token_id)
    target = torch.zeros_like(batch["labels"], dtype=torch.bool)
    target[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
    return reference_anchors(model, batch["input_ids"], batch["attention_mask"], target, safety_tokens, batch_size)


@torch.no_grad()
def reference_anchors(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    target_mask: Tensor,
    safety_tokens: SafetyTokens,
    batch_size: int = 32,
) -> AnchorCache:
    """The anchor cache of encoded refusals ``(N, L)``: the aligned model's references at ``target_mask`` positions.

    (Also re-references an existing cache's rows for other safety tokens.)
    """
    with eval_mode(model):
        device = next(model.parameters()).device
        ids = safety_tokens.id_tensor()
        weight, bias = output_rows(model, ids)
        full_weight, full_bias = output_rows(model)
        next_ids = next_tokens(input_ids)
        refs, normalisers, target_logits = [], [], []
        for start in tqdm(range(0, len(input_ids), batch_size), desc="anchor references", leave=False):
            rows = slice(start, start + batch_size)
            hidden = final_hidden_states(model, input_ids[rows].to(device), attention_mask[rows].to(device))
            refs.append(salient_logits(hidden, weight, bias).float().cpu())
            logits = F.linear(hidden, full_weight, full_bias).float()
            normalisers.append(logits.logsumexp(-1).cpu())
            target_logits.append(logits.gather(-1, next_ids[rows].to(device).unsqueeze(-1)).squeeze(-1).cpu())
    return AnchorCache(
        input_ids,
        attention_mask,
        target_mask,
        torch.cat(refs) * target_mask.unsqueeze(-1),
        torch.cat(normalisers) * target_mask,
        torch.cat(target_logits) * target_mask,
        ids,
        weights_fingerprint(model),
    )
