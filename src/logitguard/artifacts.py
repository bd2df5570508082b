"""STR's two artifacts, made once and read thereafter: the safety tokens and the anchor cache.

``safety_artifacts`` is the one place they are made: ``logitguard tokens``, ``logitguard train``, the demo and a
user's own script all call it. Files that exist are loaded and checked (the tokens against the tokenizer, the
anchors against the model and the tokens); missing ones are computed from the aligned model and saved
atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from logitguard.anchors import AnchorCache, build_anchor_cache
from logitguard.builtin_prompts import BENIGN_PAIRS, HARMFUL_PROMPTS, REJECTION_TEMPLATES
from logitguard.discovery import SafetyTokens, discover_safety_tokens
from logitguard.errors import LogitGuardError
from logitguard.preparation import Source, benign_pairs, refusal_pairs

TOKENS_FILE = "safety_tokens.json"
ANCHORS_FILE = "anchors.safetensors"


def safety_artifacts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tokens_path: str | Path,
    anchors_path: str | Path | None,
    *,
    harmful: Sequence[str] = HARMFUL_PROMPTS,
    benign: Sequence[tuple[str, str]] = BENIGN_PAIRS,
    refusals: Source = "generate",
    templates: Sequence[str] = REJECTION_TEMPLATES,
    k: int | None = 32,
) -> tuple[SafetyTokens, AnchorCache | None]:
    """The safety tokens at ``tokens_path`` and the anchor cache at ``anchors_path``, made if missing.

    Args:
        model: the aligned model (before fine-tuning; a PEFT model with fresh adapters is the same model).
        tokenizer: its tokenizer, with a chat template.
        tokens_path: the safety-token JSON artifact.
        anchors_path: the anchor cache (safetensors); None when no anchors are needed (task reference only).
        harmful: harmful prompts whose refusals are discovered and become the anchors.
        benign: (benign prompt, fallback answer) pairs; discovery contrasts the refusals with the model's own
            answers to these prompts (``"generate"``) or with the fallback answers (``"templates"``).
        refusals: ``"generate"``: the model's own greedy refusals that end (an aligned model);
            ``"templates"``: ``templates`` teacher-forced after each prompt (any model).
        k: number of safety tokens to discover; an existing artifact with another k is an error (None: any k,
            32 when discovering).
    """
    tokens_path = Path(tokens_path)
    made: list[tuple[str, str]] | None = None

    def refusal_data() -> list[tuple[str, str]]:
        nonlocal made
        if made is None:
            made = refusal_pairs(model, tokenizer, refusals, harmful, templates)
        return made

    if tokens_path.is_file():
        tokens = SafetyTokens.load(tokens_path)
        tokens.check_tokenizer(tokenizer, str(tokens_path))
        if k is not None and tokens.k != k:
            raise LogitGuardError(
                f"{tokens_path} holds {tokens.k} safety tokens, not the {k} asked for; delete it to rediscover"
            )
    else:
        answers = benign_pairs(model, tokenizer, refusals, benign)
        tokens = discover_safety_tokens(model, tokenizer, refusal_data(), answers, 32 if k is None else k)
        tokens.save(tokens_path)
    if anchors_path is None:
        return tokens, None
    anchors_path = Path(anchors_path)
    if anchors_path.is_file():
        anchors = AnchorCache.load(anchors_path)
        anchors.check(model, tokens, str(anchors_path))
    else:
        anchors = build_anchor_cache(model, tokenizer, refusal_data(), tokens)
        anchors.save(anchors_path)
    return tokens, anchors


def section_artifacts(section, model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path):
    """The artifacts a run's ``str`` settings (:class:`~logitguard.run_config.STRSection`) name, or new ones in
    ``out``; the main process makes them, the others read them (``logitguard train`` and the integrations)."""
    from accelerate import PartialState

    from logitguard.prompt_files import read_prompts

    for key, value in (("str.tokens", section.tokens), ("str.anchors", section.anchors)):
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"{key}: no such file {value}")
    tokens_path = Path(section.tokens) if section.tokens else out / TOKENS_FILE
    uses_anchors = section.str_config().uses_anchors
    anchors_path = (Path(section.anchors) if section.anchors else out / ANCHORS_FILE) if uses_anchors else None
    harmful = read_prompts(section.harmful) if section.harmful else HARMFUL_PROMPTS
    k = None if section.tokens else section.k  # a given artifact has the k it was made with
    with PartialState().main_process_first():
        return safety_artifacts(
            model, tokenizer, tokens_path, anchors_path, harmful=harmful, refusals=section.refusals, k=k
        )
