"""Anchors: harmful prompts with the aligned model's own refusals, and their cached reference logits.

The reference safety-token logits are computed once from the aligned model
and stored (safetensors), so training needs no reference model in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from logitguard.data import IGNORE_INDEX, collate, encode_chat
from logitguard.discovery import SafetyTokens
from logitguard.io import atomic_write
from logitguard.model_parts import final_hidden_states, model_fingerprint, output_rows
from logitguard.penalties import salient_logits

ANCHOR_VERSION = 2


@dataclass
class AnchorCache:
    """Teacher-forced refusals and the aligned model's safety-token logits on them.

    Attributes:
        input_ids: ``(N, L)`` right-padded token ids.
        attention_mask: ``(N, L)``.
        target_mask: ``(N, L)`` bool, True at positions whose next token is part of the refusal.
        ref_logits: ``(N, L, k)`` fp32 reference safety-token logits (0 where ``target_mask`` is False).
        ref_logsumexp: ``(N, L)`` fp32 log-sum-exp of the reference's full-vocabulary logits (0 off target).
        token_ids: ``(k,)`` the safety-token ids the logits belong to.
        model_fingerprint: fingerprint of the model the references came from.
    """

    input_ids: Tensor
    attention_mask: Tensor
    target_mask: Tensor
    ref_logits: Tensor
    ref_logsumexp: Tensor
    token_ids: Tensor
    model_fingerprint: str

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: Tensor) -> dict[str, Tensor]:
        """The rows ``index``, trimmed to their longest sequence."""
        length = int(self.attention_mask[index].sum(1).max())
        return {
            "input_ids": self.input_ids[index, :length],
            "attention_mask": self.attention_mask[index, :length],
            "target_mask": self.target_mask[index, :length],
            "ref_logits": self.ref_logits[index, :length],
            "ref_logsumexp": self.ref_logsumexp[index, :length],
        }

    def check(self, model: nn.Module, safety_tokens: SafetyTokens, source: str = "anchor cache") -> None:
        """Raise if this cache belongs to other safety tokens or another model."""
        if self.token_ids.tolist() != safety_tokens.ids:
            raise ValueError(f"{source} was built for other safety tokens; rebuild it with the current artifact")
        found = model_fingerprint(model, self.token_ids)
        if found != self.model_fingerprint:
            raise ValueError(
                f"{source} was built from another model (fingerprint {self.model_fingerprint}, this model {found}); "
                "rebuild it from the aligned model you fine-tune"
            )

    def save(self, path: str | Path) -> Path:
        tensors = {
            "input_ids": self.input_ids.contiguous(),
            "attention_mask": self.attention_mask.contiguous(),
            "target_mask": self.target_mask.to(torch.uint8).contiguous(),
            "ref_logits": self.ref_logits.float().contiguous(),
            "ref_logsumexp": self.ref_logsumexp.float().contiguous(),
            "token_ids": self.token_ids.contiguous(),
        }
        metadata = {"version": str(ANCHOR_VERSION), "model_fingerprint": self.model_fingerprint}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> AnchorCache:
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception as err:
            raise ValueError(f"{path}: not a readable safetensors anchor cache ({err})") from err
        if metadata.get("version") != str(ANCHOR_VERSION):
            raise ValueError(f"{path}: anchor cache version {metadata.get('version')!r}, expected {ANCHOR_VERSION}")
        t = load_file(str(path))
        return cls(
            t["input_ids"],
            t["attention_mask"],
            t["target_mask"].bool(),
            t["ref_logits"],
            t["ref_logsumexp"],
            t["token_ids"],
            metadata["model_fingerprint"],
        )


@torch.no_grad()
def build_anchor_cache(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    refusals: Sequence[tuple[str, str]],
    safety_tokens: SafetyTokens,
    batch_size: int = 32,
) -> AnchorCache:
    """Teacher-force ``(harmful prompt, refusal)`` pairs through the aligned model and keep its safety-token logits."""
    if not refusals:
        raise ValueError("no anchor refusals given: the aligned model refused none of the harmful prompts")
    safety_tokens.check_tokenizer(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = safety_tokens.id_tensor()
    weight, bias = output_rows(model, ids)
    full_weight, full_bias = output_rows(model)
    batch = collate([encode_chat(tokenizer, p, r) for p, r in refusals], tokenizer.pad_token_id)
    target = torch.zeros_like(batch["labels"], dtype=torch.bool)
    target[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
    refs, normalisers = [], []
    for start in tqdm(range(0, len(refusals), batch_size), desc="anchor references", leave=False):
        rows = slice(start, start + batch_size)
        hidden = final_hidden_states(
            model, batch["input_ids"][rows].to(device), batch["attention_mask"][rows].to(device)
        )
        refs.append(salient_logits(hidden, weight, bias).float().cpu())
        normalisers.append(F.linear(hidden, full_weight, full_bias).float().logsumexp(-1).cpu())
    model.train(was_training)
    ref_logits = torch.cat(refs) * target.unsqueeze(-1)
    ref_logsumexp = torch.cat(normalisers) * target
    return AnchorCache(
        batch["input_ids"],
        batch["attention_mask"],
        target,
        ref_logits,
        ref_logsumexp,
        ids,
        model_fingerprint(model, ids),
    )
