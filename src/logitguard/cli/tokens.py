"""``logitguard tokens``: discover a chat model's safety tokens and cache its anchor references.

Run: logitguard tokens --model NAME_OR_PATH --out DIR [--k 32] [--refusals generate|templates] [--harmful FILE]
Writes DIR/safety_tokens.json and DIR/anchors.safetensors, the two artifacts STR trains with (give them to
``STRTrainer``, or as ``str.tokens`` and ``str.anchors`` in a run config). Existing artifacts in DIR are
loaded and checked against the model, not recomputed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from logitguard.cli.common import ArgumentParser, add_model_arguments, load_model_and_tokenizer, number


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="logitguard tokens", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for safety_tokens.json and anchors.safetensors")
    parser.add_argument("--k", type=number(int), default=32, help="number of safety tokens to keep")
    parser.add_argument("--harmful", default=None, help="harmful prompts (.txt/.json/.jsonl/.csv); default: built-in")
    parser.add_argument("--column", default=None, help="prompt column or field of --harmful")
    parser.add_argument(
        "--refusals",
        choices=["generate", "templates"],
        default="generate",
        help="the model's own greedy refusals, or built-in rejection templates teacher-forced (default: generate)",
    )
    parser.add_argument("--templates", default=None, help="rejection templates, one per line (--refusals templates)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from logitguard.artifacts import ANCHORS_FILE, TOKENS_FILE, safety_artifacts
    from logitguard.artifacts.builtin_prompts import HARMFUL_PROMPTS, REJECTION_TEMPLATES
    from logitguard.data.prompt_files import read_prompts
    from logitguard.errors import LogitGuardError
    from logitguard.io import ensure_writable_dir

    if args.k <= 0:
        raise LogitGuardError(f"--k must be > 0, got {args.k}")
    prompts = read_prompts(args.harmful, args.column) if args.harmful else HARMFUL_PROMPTS
    templates = read_prompts(args.templates) if args.templates else REJECTION_TEMPLATES
    out = ensure_writable_dir(Path(args.out))
    tokenizer, model = load_model_and_tokenizer(args)
    tokens, anchors = safety_artifacts(
        model,
        tokenizer,
        out / TOKENS_FILE,
        out / ANCHORS_FILE,
        harmful=prompts,
        refusals=args.refusals,
        templates=templates,
        k=args.k,
    )
    shown = ", ".join(f"{t!r} {s:.3f}" for t, s in zip(tokens.tokens, tokens.scores, strict=True))
    print(f"{tokens.k} safety tokens: {shown}")
    print(f"{len(anchors)} anchor refusals")
    print(f"wrote {out / TOKENS_FILE} and {out / ANCHORS_FILE}")
    return 0
