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

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from logitguard.data import IGNORE_INDEX, collate, encode_chat
from logitguard.errors import LogitGuardError
from logitguard.io import write_json

ARTIFACT_VERSION = 1


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the vocabulary (token -> id), so an artifact is tied to its tokenizer."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


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
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise LogitGuardError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from err
        except UnicodeDecodeError as err:
            raise LogitGuardError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
        if not isinstance(raw, dict):
            raise LogitGuardError(f"{path}: a safety-token artifact is a JSON object, got {type(raw).__name__}")
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
    was_training = model.training
    model.eval()
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
    model.train(was_training)
    return total / count


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
