"""Argument helpers shared by the commands that load a model."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, require_model: bool = True) -> None:
    """The options that say which model to load and how."""
    parser.add_argument(
        "--model",
        required=require_model,
        help="hub name, local folder, .gguf file or built-in name (smollm2-135m, smollm2-135m-safe)",
    )
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--chat-template", default=None, help="Jinja file replacing the tokenizer's chat template")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda when available)")


def load_model_and_tokenizer(args: argparse.Namespace):
    """The tokenizer and model that ``add_model_arguments``' options name, on the chosen device."""
    import torch

    from logitguard.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model, args.trust_remote_code, args.revision, args.chat_template)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return tokenizer, load_model(args.model, args.trust_remote_code, args.revision, args.dtype, device=device)
