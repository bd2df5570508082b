"""``logitguard select``: keep the training samples that move the aligned model least out of line.

Run: logitguard select --model NAME_OR_PATH --data train.jsonl --out kept.jsonl [--fraction 0.1 | --threshold T]
     [--score gradient-norm|safety|first-tokens|refusal|refusal-opening] [--lora-r 16 --lora-alpha 32 --seed 0]
     logitguard select ... --rule moderate --keep 0.2 [--loss-band 1.0] [--last-layers 4]   (Moderate-Gi)

Streams the JSONL file, scores each sample with the gradient of its loss with respect to a fresh LoRA adapter
(rank, targets and seed as in training; ``train``'s ``selection:`` section scores with its very adapter), and
writes the kept records verbatim to ``--out`` and every sample's score and verdict to ``--scores`` (default:
OUT.scores.jsonl).
Interrupted runs resume where they stopped. See ``logitguard.selection`` for the method and its choices.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from logitguard.cli.common import ArgumentParser, add_model_arguments, load_model_and_tokenizer, number
from logitguard.domains import NON_NEGATIVE, POSITIVE, Domain
from logitguard.errors import LogitGuardError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="logitguard select", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="training JSONL ('messages', or 'prompt' and 'completion')")
    parser.add_argument("--out", required=True, help="where to write the kept records (JSONL)")
    parser.add_argument("--scores", default=None, help="per-sample scores JSONL (default: OUT.scores.jsonl)")
    drop = parser.add_mutually_exclusive_group()
    drop.add_argument(
        "--fraction",
        type=number(float, Domain(0, 1, low_open=True, high_open=True)),
        default=None,
        help="share of samples to drop (default 0.1)",
    )
    drop.add_argument(
        "--threshold", type=number(float, Domain()), default=None, help="drop every sample scoring at least this"
    )
    drop.add_argument(
        "--keep",
        type=number(float, Domain(0, 1, low_open=True, high_open=True)),
        default=None,
        help="share kept by --rule moderate, lowest, highest or random (the paper's ρ, 0.2)",
    )
    parser.add_argument(
        "--rule",
        choices=["drop-top", "moderate", "lowest", "highest", "random"],
        default="drop-top",
        help="drop-top: drop the highest scores; moderate: Moderate-Gi (loss band, then the scores closest to the "
        "median); lowest / highest: Low-Gi / High-Gi; random: the paper's control",
    )
    parser.add_argument(
        "--loss-band", type=number(float, POSITIVE), default=1.0, help="keep-rules: ±σ band of the loss pre-filter"
    )
    parser.add_argument("--no-loss-band", action="store_true", help="keep-rules without the loss pre-filter")
    parser.add_argument(
        "--gradient",
        choices=["dense", "trainable"],
        default="dense",
        help="dense: the weights the LoRA adapters adapt (as full fine-tuning sees them); trainable: the adapters",
    )
    parser.add_argument(
        "--last-layers", type=number(int), default=None, help="score only the last N decoder layers (a faster proxy)"
    )
    parser.add_argument(
        "--score",
        choices=["gradient-norm", "safety", "first-tokens", "refusal", "refusal-opening"],
        default="gradient-norm",
        help="refusal-opening: how likely the aligned model starts its own refusal where the answer starts; "
        "refusal: its safety-token mass there (both without gradient)",
    )
    parser.add_argument("--tokens", default=None, help="safety-token artifact for --score refusal (default: discover)")
    parser.add_argument("--batch-size", type=number(int), default=8)
    parser.add_argument("--max-length", type=number(int, Domain(2)), default=1024)
    parser.add_argument("--truncate", action="store_true", help="score overlong samples' first tokens (default: error)")
    parser.add_argument("--lora-r", type=number(int), default=16)
    parser.add_argument("--lora-alpha", type=number(int), default=32)
    parser.add_argument("--lora-targets", nargs="+", default=["all-linear"], help="LoRA target modules")
    parser.add_argument(
        "--seed", type=number(int, NON_NEGATIVE), default=0, help="seed of the LoRA initialisation (as in training)"
    )
    parser.add_argument(
        "--anchors", default=None, help="anchor cache whose refusals give the safety gradient or refusal openings"
    )
    parser.add_argument(
        "--refusals",
        choices=["generate", "templates"],
        default="generate",
        help="without --anchors: the model's own refusals of built-in harmful prompts, or built-in templates",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from logitguard.selection import SelectionConfig

    drop_top = args.rule == "drop-top"
    if drop_top == (args.keep is not None):
        raise LogitGuardError("--keep goes with --rule moderate, lowest, highest or random (and only with them)")
    fraction = args.fraction if args.fraction is not None or args.threshold is not None or not drop_top else 0.1
    overflow = "truncate" if args.truncate else "error"
    config = SelectionConfig(
        fraction,
        args.score,
        args.batch_size,
        args.max_length,
        overflow,
        args.threshold,
        rule=args.rule,
        keep=args.keep,
        loss_band=None if args.no_loss_band else args.loss_band,
        gradient=args.gradient,
        last_layers=args.last_layers,
        seed=args.seed,
    )
    kept, total = run(args, config)
    print(f"wrote {kept} of {total} records to {args.out}")
    return 0


def check_paths(data: Path, out: Path, scores: Path) -> None:
    """The outputs must be new paths or this command's own unchanged earlier outputs, never the input data (nor
    each other): a user's file is never replaced."""
    from logitguard.io import regular_file
    from logitguard.outputs import claim_file

    regular_file(data, "--data file")
    resolved = {"--data": data.resolve()}
    for name, path in (("--out", out), ("--scores", scores)):
        clash = next((other for other, p in resolved.items() if p == path.resolve()), None)
        if clash:
            raise LogitGuardError(f"{name} {path} is the same file as {clash}: it would be overwritten")
        claim_file(path, "select", name)
        resolved[name] = path.resolve()


def run(args: argparse.Namespace, config) -> tuple[int, int]:
    """Score, select and write; returns (kept, total) record counts."""
    from peft import get_peft_model
    from transformers import set_seed

    from logitguard.data.chat import iter_chat_jsonl
    from logitguard.fingerprints import file_fingerprint
    from logitguard.io import atomic_write, ensure_writable_dir
    from logitguard.outputs import OutputLock, record_file
    from logitguard.selection import parameters_fingerprint, select_samples
    from logitguard.selection.scores import READS_REFUSALS
    from logitguard.settings import LoraSection

    data, out = Path(args.data), Path(args.out)
    scores = Path(args.scores) if args.scores else out.with_name(out.stem + ".scores.jsonl")
    check_paths(data, out, scores)
    total = sum(1 for _ in iter_chat_jsonl(data))  # also checks every record before any model is loaded
    if total == 0:
        raise LogitGuardError(f"{data}: no training records")
    targets = args.lora_targets[0] if args.lora_targets == ["all-linear"] else args.lora_targets
    lora = LoraSection(r=args.lora_r, alpha=args.lora_alpha, dropout=0.0, target_modules=targets)
    ensure_writable_dir(out.parent)
    ensure_writable_dir(scores.parent)
    with OutputLock(out), OutputLock(scores):
        check_paths(data, out, scores)  # again, now that no other run can write them
        set_seed(args.seed)  # LoRA initialisation draws from the global RNG, as in `logitguard train`
        tokenizer, model = load_model_and_tokenizer(args)
        try:
            model = get_peft_model(model, lora.peft_config())
        except ValueError as e:
            raise LogitGuardError(f"--lora-targets: {' '.join(str(e).split())}") from None
        tokens = refusal_tokens_for(args, model, tokenizer) if config.score == "refusal" else None
        reads = config.score in READS_REFUSALS
        anchors, refusals = safety_refusals_for(args, model, tokenizer) if reads else (None, [])
        identity = {
            "model": parameters_fingerprint(model, trainable_only=False),
            "data": file_fingerprint(data),
            "adapter": parameters_fingerprint(model),
        }
        samples = ((where, messages) for where, messages, _ in iter_chat_jsonl(data))
        keep = select_samples(
            model,
            tokenizer,
            samples,
            config,
            scores,
            identity,
            total=total,
            tokens=tokens,
            anchors=anchors,
            refusals=refusals,
        )
        record_file(scores, "select")

        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as f:
                for kept, (_, _, line) in zip(keep, iter_chat_jsonl(data), strict=True):
                    if kept:
                        f.write(line if line.endswith("\n") else line + "\n")

        atomic_write(out, write)
        record_file(out, "select")
    return sum(keep), total


def refusal_tokens_for(args: argparse.Namespace, model, tokenizer):
    """The safety tokens of the refusal score: the given artifact, or discovered from the model's refusals."""
    from logitguard.artifacts.builtin_prompts import BENIGN_PAIRS, HARMFUL_PROMPTS
    from logitguard.artifacts.discovery import discover_safety_tokens
    from logitguard.artifacts.pairs import benign_pairs, refusal_pairs
    from logitguard.core.safety_tokens import SafetyTokens

    if args.tokens:
        tokens = SafetyTokens.load(args.tokens)
        tokens.check_tokenizer(tokenizer, args.tokens)
        return tokens
    refusals = refusal_pairs(model, tokenizer, args.refusals, HARMFUL_PROMPTS)
    return discover_safety_tokens(
        model, tokenizer, refusals, benign_pairs(model, tokenizer, args.refusals, BENIGN_PAIRS)
    )


def safety_refusals_for(args: argparse.Namespace, model, tokenizer):
    """The refusals the safety score takes its direction from and the refusal-opening score its openings: an anchor
    cache, or the model's refusals of the built-in harmful prompts (or built-in templates)."""
    from logitguard.artifacts.builtin_prompts import HARMFUL_PROMPTS
    from logitguard.artifacts.pairs import refusal_pairs
    from logitguard.core.anchor_cache import AnchorCache

    if args.anchors:
        return AnchorCache.load(args.anchors), []
    return None, refusal_pairs(model, tokenizer, args.refusals, HARMFUL_PROMPTS)
