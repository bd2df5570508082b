"""Anchors: harmful prompts with the aligned model's own refusals, and their cached reference logits.

The reference safety-token logits are computed once from the aligned model
and stored (safetensors), so training needs no reference model in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from logitguard.core.model_access import vocab_size, weights_fingerprint
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.errors import LogitGuardError
from logitguard.io import atomic_write

ANCHOR_VERSION = 4  # 4: the model fingerprint covers every weight, not the safety tokens' head rows


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
        model_fingerprint: fingerprint of the model the references came from (all its weights:
            :func:`~logitguard.core.model_access.weights_fingerprint`).
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
        """Raise if this cache belongs to other safety tokens or another model, or holds ids outside its vocabulary."""
        if self.token_ids.tolist() != safety_tokens.ids:
            raise LogitGuardError(f"{source} was built for other safety tokens; rebuild it with the current artifact")
        vocab = vocab_size(model)
        if int(self.input_ids.max()) >= vocab:
            raise LogitGuardError(
                f"{source}: token id {int(self.input_ids.max())} is outside the model's {vocab} tokens"
            )
        found = weights_fingerprint(model)
        if found != self.model_fingerprint:
            raise LogitGuardError(
                f"{source} was built from another model (weights fingerprint {self.model_fingerprint}, this model "
                f"{found}; the same weights in float32 and bfloat16 agree, a quantised or merged copy does not): "
                "rebuild it from the aligned model you fine-tune, loaded as you train it"
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
        check_contents(path, t)
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


INTEGER_TENSORS = ("input_ids", "attention_mask", "token_ids")
REFERENCE_TENSORS = ("ref_logits", "ref_logsumexp", "ref_target_logits")


def check_contents(path: Path, t: dict[str, Tensor]) -> None:
    """An anchor cache STR can train with: integer ids in range, masks of 0 and 1, finite references at every
    target position, and at least one target position (a cache without any would make STR a silent no-op)."""
    for key in INTEGER_TENSORS:
        if t[key].dtype not in (torch.int64, torch.int32):
            raise LogitGuardError(f"{path}: tensor {key!r} holds {t[key].dtype} values, expected integer ids")
    for key in ("input_ids", "token_ids"):
        if t[key].numel() and int(t[key].min()) < 0:
            raise LogitGuardError(f"{path}: tensor {key!r} holds a negative token id")
    for key in ("attention_mask", "target_mask"):
        if not bool(((t[key] == 0) | (t[key] == 1)).all()):
            raise LogitGuardError(f"{path}: tensor {key!r} must hold only 0 and 1")
    target = t["target_mask"].bool()
    if not bool(target.any()):
        raise LogitGuardError(f"{path}: the anchor cache has no target position, so STR would pin nothing")
    if bool((target & ~t["attention_mask"].bool()).any()):
        raise LogitGuardError(f"{path}: a target position lies on padding")
    for key in REFERENCE_TENSORS:
        if not t[key].dtype.is_floating_point:
            raise LogitGuardError(f"{path}: tensor {key!r} holds {t[key].dtype} values, expected floats")
        if not bool(torch.isfinite(t[key][target]).all()):
            raise LogitGuardError(f"{path}: tensor {key!r} holds non-finite reference values; rebuild the cache")


def next_tokens(input_ids: Tensor) -> Tensor:
    """``(N, L)`` the token that follows each position (0 after the last one)."""
    return F.pad(input_ids[:, 1:], (0, 1))
