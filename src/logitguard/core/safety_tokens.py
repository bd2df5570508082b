"""The safety-token artifact: the k token ids STR pins, versioned JSON tied to its tokenizer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from logitguard.errors import LogitGuardError
from logitguard.fingerprints import content_fingerprint
from logitguard.io import read_json, write_json

ARTIFACT_VERSION = 1


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the vocabulary (token -> id), so an artifact is tied to its tokenizer."""
    return content_fingerprint(sorted(tokenizer.get_vocab().items()))


@dataclass
class SafetyTokens:
    """The salient tokens of an aligned model's refusals."""

    ids: list[int]
    tokens: list[str]
    scores: list[float]
    tokenizer_fingerprint: str
    method: dict = field(default_factory=dict)
    version: int = ARTIFACT_VERSION

    @property
    def k(self) -> int:
        return len(self.ids)

    def id_tensor(self) -> Tensor:
        return torch.tensor(self.ids, dtype=torch.long)

    def __post_init__(self) -> None:
        if not self.ids:
            raise LogitGuardError("a safety-token artifact needs at least one token id")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.ids):
            raise LogitGuardError(f"safety-token ids must be non-negative integers, got {self.ids}")
        if len(set(self.ids)) != len(self.ids):
            raise LogitGuardError(f"safety-token ids must be distinct, got duplicates in {self.ids}")
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) for s in self.scores):
            raise LogitGuardError("safety-token scores must be finite numbers")

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, source: str = "safety-token artifact") -> None:
        if max(self.ids) >= len(tokenizer):
            raise LogitGuardError(f"{source}: id {max(self.ids)} is outside the tokenizer's {len(tokenizer)} tokens")
        found = tokenizer_fingerprint(tokenizer)
        if found != self.tokenizer_fingerprint:
            raise LogitGuardError(
                f"{source} was made with another tokenizer (fingerprint {self.tokenizer_fingerprint}, "
                f"this tokenizer {found}); rerun discovery for this model"
            )

    def save(self, path: str | Path) -> Path:
        return write_json(path, {**asdict(self), "k": self.k})

    @classmethod
    def load(cls, path: str | Path) -> SafetyTokens:
        path = Path(path)
        raw = read_json(path, dict, "a safety-token artifact")
        if raw.get("version") != ARTIFACT_VERSION:
            found = raw.get("version")
            raise LogitGuardError(f"{path}: safety-token artifact version {found!r}, expected {ARTIFACT_VERSION}")
        missing = {"ids", "tokens", "scores", "tokenizer_fingerprint"} - raw.keys()
        if missing:
            raise LogitGuardError(f"{path}: safety-token artifact lacks field(s) {sorted(missing)}")
        unknown = raw.keys() - {f.name for f in fields(cls)} - {"k"}
        if unknown:
            raise LogitGuardError(f"{path}: unknown field(s) {sorted(unknown)} in a safety-token artifact")
        if not all(isinstance(raw[key], list) for key in ("ids", "tokens", "scores")):
            raise LogitGuardError(f"{path}: 'ids', 'tokens' and 'scores' must be lists")
        if not (len(raw["ids"]) == len(raw["tokens"]) == len(raw["scores"])) or not raw["ids"]:
            raise LogitGuardError(f"{path}: 'ids', 'tokens' and 'scores' must be non-empty and of equal length")
        raw.pop("k", None)
        try:
            return cls(**raw)
        except LogitGuardError as err:
            raise LogitGuardError(f"{path}: {err}") from None


def check_vocabulary(tokens: SafetyTokens, vocab: int, source: str = "safety-token artifact") -> None:
    """Every safety-token id must be a row of a ``vocab``-row output layer (for hosts without a tokenizer)."""
    if max(tokens.ids) >= vocab:
        raise LogitGuardError(f"{source}: id {max(tokens.ids)} is outside the model's {vocab} output rows")
