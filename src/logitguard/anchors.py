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
from logitguard.errors import LogitGuardError
from logitguard.io import atomic_write
from logitguard.model_parts import final_hidden_states, model_fingerprint, output_rows
from logitguard.penalties import salient_logits

ANCHOR_VERSION = 3


@dataclass
class AnchorCache:
    """Teacher-forced refusals and the aligned model's safety-token logits on them.

    Attributes:
        input_ids: ``(N, L)`` right-padded token ids.
        attention_mask: ``(N, L)``.
        target_mask: ``(N, L)`` bool, True at positions whose next token is part of the refusal.
        ref_logits: ``(N, L, k)`` fp32 reference safety-token logits (0 where ``target_mask`` is False).
        ref_logsumexp: ``(N, L)`` fp32 log-sum-exp of the reference's full-vocabulary logits (0 off target).
        ref_target_logits: ``(N, L)`` fp32 reference logit of the refusal's own next token (0 off target).
        token_ids: ``(k,)`` the safety-token ids the logits belong to.
        model_fingerprint: fingerprint of the model the references came from.
    """

    input_ids: Tensor
    attention_mask: Tensor
    target_mask: Tensor
    ref_logits: Tensor
    ref_logsumexp: Tensor
    ref_target_logits: Tensor
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
            "ref_target_logits": self.ref_target_logits[index, :length],
        }

    def check(self, model: nn.Module, safety_tokens: SafetyTokens, source: str = "anchor cache") -> None:
        """Raise if this cache belongs to other safety tokens or another model."""
        if self.token_ids.tolist() != safety_tokens.ids:
            raise LogitGuardError(f"{source} was built for other safety tokens; rebuild it with the current artifact")
        found = model_fingerprint(model, self.token_ids)
        if found != self.model_fingerprint:
            raise LogitGuardError(
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
            "ref_target_logits": self.ref_target_logits.float().contiguous(),
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
            raise LogitGuardError(f"{path}: not a readable safetensors anchor cache ({err})") from err
        if metadata.get("version") != str(ANCHOR_VERSION):
            raise LogitGuardError(
                f"{path}: anchor cache version {metadata.get('version')!r}, expected {ANCHOR_VERSION}; "
                "rebuild it (logitguard tokens, or delete it and rerun logitguard train)"
            )
        t = load_file(str(path))
        expected = {
            "input_ids": 2,
            "attention_mask": 2,
            "target_mask": 2,
            "ref_logits": 3,
            "ref_logsumexp": 2,
            "ref_target_logits": 2,
            "token_ids": 1,
        }
        missing = sorted(expected.keys() - t.keys())
        if missing:
            raise LogitGuardError(f"{path}: anchor cache lacks tensor(s) {missing}")
        shape = tuple(t["input_ids"].shape)
        for key, dims in expected.items():
            found = tuple(t[key].shape)
            want = {1: (t["token_ids"].numel(),), 2: shape, 3: (*shape, t["token_ids"].numel())}[dims]
            if found != want:
                raise LogitGuardError(f"{path}: tensor {key!r} has shape {found}, expected {want}")
        if "model_fingerprint" not in metadata:
            raise LogitGuardError(f"{path}: anchor cache lacks its model fingerprint")
        return cls(
            t["input_ids"],
            t["attention_mask"],
            t["target_mask"].bool(),
            t["ref_logits"],
            t["ref_logsumexp"],
            t["ref_target_logits"],
            t["token_ids"],
            metadata["model_fingerprint"],
        )


def next_tokens(input_ids: Tensor) -> Tensor:
    """``(N, L)`` the token that follows each position (0 after the last one)."""
    return F.pad(input_ids[:, 1:], (0, 1))


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
    was_training = model.training
    model.eval()
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
    model.train(was_training)
    return AnchorCache(
        input_ids,
        attention_mask,
        target_mask,
        torch.cat(refs) * target_mask.unsqueeze(-1),
        torch.cat(normalisers) * target_mask,
        torch.cat(target_logits) * target_mask,
        ids,
        model_fingerprint(model, ids),
    )
