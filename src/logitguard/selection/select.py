"""The one call that selects samples with STR's artifacts: ``logitguard train``, ``logitguard select``, the demo
and the benchmarks all go through :func:`select_samples`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from logitguard.core.anchor_cache import AnchorCache
from logitguard.core.safety_tokens import SafetyTokens
from logitguard.data.chat import Messages
from logitguard.errors import LogitGuardError
from logitguard.selection.gradients import anchor_refusal_batch, refusal_batch, safety_direction
from logitguard.selection.run import run_selection
from logitguard.selection.scores import READS_REFUSALS, SelectionConfig, refusal_openings


def select_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Iterable[tuple[str, Messages]],
    config: SelectionConfig,
    scores_path: str | Path,
    identity: dict,
    *,
    total: int | None = None,
    tokens: SafetyTokens | None = None,
    anchors: AnchorCache | None = None,
    refusals: Sequence[tuple[str, str]] = (),
) -> list[bool]:
    """Score ``(where, conversation)`` samples on ``model`` (the fresh adapter about to be trained) and return the
    keep mask; scores are written resumably to ``scores_path`` (:func:`~logitguard.selection.run.run_selection`).

    The ``safety`` score's direction is the refusal-loss gradient on the ``anchors``' refusals, or on the given
    ``(harmful prompt, refusal)`` pairs without anchors; the ``refusal-opening`` score takes the openings of the
    same refusals; the ``refusal`` score needs the safety ``tokens``. When ``tokens`` are given, every record also
    gets its refusal score.
    """
    direction = openings = None
    if config.score in READS_REFUSALS:
        if anchors is not None:
            batch = anchor_refusal_batch(anchors)
        elif refusals:
            batch = refusal_batch(refusals, tokenizer)
        else:
            raise LogitGuardError(f"the {config.score} score needs the anchors or refusal pairs to read refusals from")
        if config.score == "safety":
            direction = safety_direction(model, batch, config.batch_size)
        else:
            openings = refusal_openings(batch["input_ids"], batch["labels"])
    if config.score == "refusal" and tokens is None:
        raise LogitGuardError("the refusal score needs the safety tokens")
    ids = tokens.id_tensor() if tokens is not None else None
    return run_selection(
        model,
        tokenizer,
        samples,
        config,
        scores_path,
        identity,
        direction=direction,
        total=total,
        safety_ids=ids,
        openings=openings,
    )
