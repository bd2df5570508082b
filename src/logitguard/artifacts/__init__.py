"""STR's two artifacts, made once and read thereafter: the safety tokens and the anchor cache.

``safety_artifacts`` is the one place they are made: ``logitguard tokens``, ``logitguard train``, the demo and a
user's own script all call it. Files that exist are loaded and checked (the tokens against the tokenizer, the
anchors against the model and the tokens); missing ones are computed from the aligned model and saved
atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from torch import nn
from transformers import PreTrainedTokenizerBase

from logitguard.artifacts.builtin_prompts import BENIGN_PAIRS, HARMFUL_PROMPTS, LOOKALIKE_PROMPTS, REJECTION_TEMPLATES
from logitguard.artifacts.discovery import discover_safety_tokens
from logitguard.artifacts.pairs import Source, benign_pairs, compliant_pairs, refusal_pairs
from logitguard.artifacts.references import build_anchor_cache
from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.data.prompt_files import read_prompts
from logitguard.errors import LogitGuardError
from logitguard.settings import STRSection

TOKENS_FILE = "safety_tokens.json"
ANCHORS_FILE = "anchors.safetensors"
BENIGN_ANCHORS_FILE = "benign_anchors.safetensors"


class SafetyArtifacts(NamedTuple):
    """What STR trains with: the safety tokens, and the anchor cache (None when only the task reference is used).

    A named tuple, so ``tokens, anchors = safety_artifacts(...)`` and ``artifacts.tokens`` both read it.
    """

    tokens: SafetyTokens
    anchors: AnchorCache | None


@dataclass
class PreparedArtifacts:
    """Artifacts loaded or made in memory, and the files the made ones still have to be written to.

    ``benign_anchors`` (two-sided STR): safe prompts that sound unsafe with the aligned model's own answers.
    """

    artifacts: SafetyArtifacts
    unsaved: list[tuple[Path, SafetyTokens | AnchorCache]] = field(default_factory=list)
    benign_anchors: AnchorCache | None = None

    def save(self) -> SafetyArtifacts:
        """Write the made artifacts (atomically); returns them."""
        for path, artifact in self.unsaved:
            artifact.save(path)
        self.unsaved = []
        return self.artifacts


def prepare_artifacts(
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
    benign_anchors_path: str | Path | None = None,
    lookalike: Sequence[str] = LOOKALIKE_PROMPTS,
) -> PreparedArtifacts:
    """The artifacts at ``tokens_path``, ``anchors_path`` and ``benign_anchors_path`` (None: not needed), loaded and
    checked when the files exist, made in memory from the aligned model when they do not; nothing is written
    (:meth:`PreparedArtifacts.save` writes them).

    Args: as :func:`safety_artifacts`; ``lookalike``: safe prompts that sound unsafe, whose answers (the ones the
    model gives without a refusal opening) become the benign anchors.
    """
    tokens_path = Path(tokens_path)
    made: list[tuple[str, str]] | None = None
    unsaved: list[tuple[Path, SafetyTokens | AnchorCache]] = []

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
                f"{tokens_path} holds {tokens.k} safety tokens, not the {k} asked for; make k match or rediscover"
            )
    else:
        answers = benign_pairs(model, tokenizer, refusals, benign)
        tokens = discover_safety_tokens(model, tokenizer, refusal_data(), answers, 32 if k is None else k)
        unsaved.append((tokens_path, tokens))

    def anchor_cache(path: str | Path | None, pairs: Callable[[], list[tuple[str, str]]]) -> AnchorCache | None:
        if path is None:
            return None
        cache, made = loaded_or_built(path, model, tokenizer, tokens, pairs)
        if made:
            unsaved.append((Path(path), cache))
        return cache

    anchors = anchor_cache(anchors_path, refusal_data)
    benign = anchor_cache(benign_anchors_path, lambda: compliant_pairs(model, tokenizer, lookalike))
    return PreparedArtifacts(SafetyArtifacts(tokens, anchors), unsaved, benign)


def loaded_or_built(
    path: str | Path,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tokens: SafetyTokens,
    pairs: Callable[[], list[tuple[str, str]]],
) -> tuple[AnchorCache, bool]:
    """The anchor cache at ``path``, loaded and checked against ``model``, or built in memory from ``pairs()``
    (``(prompt, answer)``); and whether it was built (so it still has to be saved)."""
    path = Path(path)
    if path.is_file():
        cache = AnchorCache.load(path)
        cache.check(model, tokens, str(path))
        return cache, False
    return build_anchor_cache(model, tokenizer, pairs(), tokens), True


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
) -> SafetyArtifacts:
    """The safety tokens at ``tokens_path`` and the anchor cache at ``anchors_path``, made (and saved) if missing.

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
    prepared = prepare_artifacts(
        model,
        tokenizer,
        tokens_path,
        anchors_path,
        harmful=harmful,
        benign=benign,
        refusals=refusals,
        templates=templates,
        k=k,
    )
    return prepared.save()


def benign_anchors(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tokens: SafetyTokens,
    path: str | Path,
    *,
    lookalike: Sequence[str] = LOOKALIKE_PROMPTS,
) -> AnchorCache:
    """Two-sided STR's benign anchor cache at ``path``, made (and saved) if missing: safe prompts that sound unsafe
    (``lookalike``) with the aligned model's own answers, the ones it gives without a refusal opening. Pass it to a
    host as ``benign_anchors`` with ``STRConfig(benign_anchors_per_step=...)``.

    Args:
        model: the aligned model (before fine-tuning; a PEFT model with fresh adapters is the same model).
        tokenizer: its tokenizer, with a chat template.
        tokens: the safety tokens (:func:`safety_artifacts`).
        path: the benign anchor cache (safetensors).
        lookalike: safe prompts that sound unsafe (default: built-in ones).
    """
    cache, made = loaded_or_built(path, model, tokenizer, tokens, lambda: compliant_pairs(model, tokenizer, lookalike))
    if made:
        cache.save(path)
    return cache


def section_paths(section: STRSection, out: Path) -> tuple[Path, Path | None, Path | None]:
    """Where a run's ``str`` settings take the safety tokens, anchors and benign anchors from (given files, or new
    ones in ``out``; None when not needed); a given file that does not exist is an error."""
    keys = (("str.tokens", section.tokens), ("str.anchors", section.anchors))
    for key, value in (*keys, ("str.benign_anchors", section.benign_anchors)):
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"{key}: no such file {value}")
    config = section.str_config()
    tokens_path = Path(section.tokens) if section.tokens else out / TOKENS_FILE
    anchors_path = (Path(section.anchors) if section.anchors else out / ANCHORS_FILE) if config.uses_anchors else None
    benign_path = None
    if config.two_sided:
        benign_path = Path(section.benign_anchors) if section.benign_anchors else out / BENIGN_ANCHORS_FILE
    return tokens_path, anchors_path, benign_path


def prepare_section_artifacts(
    section: STRSection, model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path
) -> PreparedArtifacts:
    """The artifacts a run's ``str`` settings name, loaded, or made in memory for ``out``."""
    tokens_path, anchors_path, benign_path = section_paths(section, out)
    harmful = read_prompts(section.harmful) if section.harmful else HARMFUL_PROMPTS
    lookalike = read_prompts(section.lookalike) if section.lookalike else LOOKALIKE_PROMPTS
    return prepare_artifacts(
        model,
        tokenizer,
        tokens_path,
        anchors_path,
        harmful=harmful,
        refusals=section.refusals,
        k=section.k,
        benign_anchors_path=benign_path,
        lookalike=lookalike,
    )


def section_artifacts(
    section: STRSection, model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path
) -> PreparedArtifacts:
    """The artifacts a run's ``str`` settings name, or new ones saved in ``out``; the main process makes them, the
    others then read them (the framework integrations)."""
    from accelerate import PartialState

    with PartialState().main_process_first():
        prepared = prepare_section_artifacts(section, model, tokenizer, out)
        prepared.save()
        return prepared
