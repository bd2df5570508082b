"""``logitguard tokens``: discover a chat model's safety tokens and save the artifact.

Run: logitguard tokens --model NAME_OR_PATH --out tokens.json [--k 32] [--refusals generate|templates]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from logitguard.builtin_prompts import HARMFUL_PROMPTS, REJECTION_TEMPLATES
from logitguard.prompt_files import read_prompts


def add_model_arguments(parser: argparse.ArgumentParser, require_model: bool = True) -> None:
    """The options that say which model to load and how (shared by the commands that load one)."""
    parser.add_argument("--model", required=require_model, help="hub name or local path of the chat model")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--chat-template", default=None, help="Jinja file (or string) replacing the tokenizer's")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitguard tokens", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="where to write the safety-token JSON artifact")
    parser.add_argument("--k", type=int, default=32, help="number of safety tokens to keep")
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
    import torch

    from logitguard.discovery import discover_safety_tokens
    from logitguard.io import ensure_writable_dir
    from logitguard.loading import load_model, load_tokenizer
    from logitguard.preparation import benign_pairs, refusal_pairs

    try:
        prompts = read_prompts(args.harmful, args.column) if args.harmful else HARMFUL_PROMPTS
        templates = read_prompts(args.templates) if args.templates else REJECTION_TEMPLATES
        out = Path(args.out)
        ensure_writable_dir(out.parent)
        tokenizer = load_tokenizer(args.model, args.trust_remote_code, args.revision, args.chat_template)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(args.model, args.trust_remote_code, args.revision, args.dtype, device=device)
        refusals = refusal_pairs(model, tokenizer, args.refusals, prompts, templates)
        benign = benign_pairs(model, tokenizer, args.refusals)
        tokens = discover_safety_tokens(model, tokenizer, refusals, benign, k=args.k)
    except (ValueError, FileNotFoundError) as e:
        print(f"logitguard tokens: {e}", file=sys.stderr)
        return 2
    tokens.save(out)
    shown = ", ".join(f"{t!r} {s:.3f}" for t, s in zip(tokens.tokens, tokens.scores, strict=True))
    print(f"{tokens.k} safety tokens from {len(refusals)} refusals and {len(benign)} benign answers: {shown}")
    print(f"wrote {out}")
    return 0
