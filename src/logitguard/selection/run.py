"""Selection, resumably: every sample scored once, its record appended as it is scored, the verdicts at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from logitguard.data.chat import Messages
from logitguard.errors import LogitGuardError
from logitguard.fingerprints import fingerprint
from logitguard.io import atomic_write, ensure_writable_dir, write_json
from logitguard.selection.scores import REFUSAL_SCORES, SelectionConfig, score_samples, selection_mask


def parameters_fingerprint(model: nn.Module, trainable_only: bool = True) -> str:
    """Fingerprint of the (trainable) parameters' names, shapes and leading values: the adapter initialisation, or
    with ``trainable_only=False`` the whole model, so scores of another model at the same path are not reused."""

    def chunks():
        for name, p in model.named_parameters():
            if p.requires_grad or not trainable_only:
                yield f"{name}:{tuple(p.shape)}"
                yield p.detach().flatten()[:4096].float().cpu().numpy().round(6).tobytes()

    return fingerprint(chunks())


def run_selection(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Iterable[tuple[str, Messages]],
    config: SelectionConfig,
    scores_path: str | Path,
    identity: dict,
    *,
    direction: dict[str, tuple[Tensor, Tensor | None]] | None = None,
    total: int | None = None,
    safety_ids: Tensor | None = None,
    openings: Tensor | None = None,
) -> list[bool]:
    """Score every sample, resumably, and write the scores with their keep/drop verdicts; returns the mask.

    Records are appended to ``SCORES.partial`` batch by batch (its first line holds ``identity``: what the
    scores depend on); a restart with the same identity skips the samples already scored. At the end
    ``SCORES`` (one record per sample, with its ``index`` and ``kept``) and ``SCORES.summary.json`` are written
    atomically and the partial file is removed. If both exist for the same identity, they are reused.
    ``identity`` should hold content fingerprints (:mod:`logitguard.fingerprints`, :func:`parameters_fingerprint`),
    never paths alone: data edited in place, or another model at the same
    path, must not reuse stale scores.
    """
    scores_path = Path(scores_path)
    identity = {**identity, "score": config.score, "max_length": config.max_length, "on_overflow": config.on_overflow}
    identity |= {"gradient": config.gradient, "last_layers": config.last_layers}
    if not config.scores_needed:  # a random draw: nothing to score
        records = [{"score": 0.0} for _ in samples] if total is None else [{"score": 0.0}] * total
        keep = selection_mask(config, records)
        print(f"selection: kept {sum(keep)} of {len(keep)} samples ({config.describe()})")
        return keep
    if safety_ids is not None:
        identity["safety_ids"] = safety_ids.tolist()
    if openings is not None:
        identity["openings"] = openings.tolist()
    if config.score in REFUSAL_SCORES:  # scores written before refusing answers scored 0 are not reused
        identity["refusing_answers"] = "score 0"
    summary_path = scores_path.with_name(scores_path.name + ".summary.json")
    records = _finished_scores(scores_path, summary_path, identity)
    if records is None:
        ensure_writable_dir(scores_path.parent)
        partial = scores_path.with_name(scores_path.name + ".partial")
        done = _resume(partial, identity)
        start = time.perf_counter()
        with partial.open("a", encoding="utf-8") as f:
            if not done:
                f.write(json.dumps({"identity": identity}) + "\n")
            progress = tqdm(total=total, initial=len(done), desc="scoring samples", unit="sample")
            for batch in score_samples(
                model, tokenizer, islice(samples, len(done), None), config, direction, safety_ids, openings
            ):
                f.write("".join(json.dumps(r) + "\n" for r in batch))
                f.flush()
                done += batch
                progress.update(len(batch))
            progress.close()
        if not done:
            raise LogitGuardError("no samples to select from")
        records = done
        _write_final(partial, scores_path, selection_mask(config, records))
        partial.unlink()
        summary = {"identity": identity, "samples": len(done), "seconds": time.perf_counter() - start}
        write_json(summary_path, summary)
    keep = selection_mask(config, records)  # the rule is not part of the scores' identity: scores are reused
    print(f"selection: kept {sum(keep)} of {len(keep)} samples ({config.describe()}); scores in {scores_path}")
    return keep


def _finished_scores(scores_path: Path, summary_path: Path, identity: dict) -> list[dict] | None:
    if not (scores_path.is_file() and summary_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("identity") != identity:
        raise LogitGuardError(
            f"{scores_path} holds scores of another model, data or scoring setting ({summary_path}); "
            "choose another scores path or delete it"
        )
    with scores_path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _resume(partial: Path, identity: dict) -> list[dict]:
    """Records already in ``partial`` (a torn last line is cut off); raises if they belong to other settings."""
    if not partial.is_file():
        return []
    with partial.open("r+", encoding="utf-8") as f:
        lines, valid_bytes = [], 0
        for line in f:
            if not line.endswith("\n"):
                break
            lines.append(line)
            valid_bytes += len(line.encode("utf-8"))
        f.truncate(valid_bytes)
    if not lines:
        return []
    if json.loads(lines[0]).get("identity") != identity:
        raise LogitGuardError(
            f"{partial} holds partial scores of another model, data or scoring setting; "
            "delete it to start over, or run with the settings it was started with"
        )
    print(f"resuming selection: {len(lines) - 1} samples already scored in {partial}")
    return [json.loads(line) for line in lines[1:]]


def _write_final(partial: Path, scores_path: Path, keep: list[bool]) -> None:
    def write(tmp: Path) -> None:
        with partial.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            next(src)
            for i, line in enumerate(src):
                dst.write(json.dumps({"index": i, **json.loads(line), "kept": keep[i]}) + "\n")

    atomic_write(scores_path, write)
