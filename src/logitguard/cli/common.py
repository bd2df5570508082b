"""What the commands share: an argument parser whose errors are one line, typed numeric options with their
domains, and the options that say which model to load."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from logitguard.domains import AT_LEAST_ONE, Domain, check_number
from logitguard.errors import LogitGuardError


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line on stderr (exit code 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def number(kind: type, domain: Domain = AT_LEAST_ONE) -> Callable[[str], float]:
    """An argparse ``type``: a ``kind`` (int or float) that is finite and in ``domain``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            kind_name = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind_name}, got {text!r}") from None
        try:
            check_number(value, "the value", domain)
        except LogitGuardError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("the value ")) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_model_arguments(parser: argparse.ArgumentParser, require_model: bool = True) -> None:
    """The options that say which model to load and how."""
    parser.add_argument(
        "--model",
        required=require_model,
        help="hub name, local folder, .gguf file or built-in name (smollm2-135m, smollm2-135m-safe, "
        "qwen2.5-coder-0.5b, qwen2.5-coder-1.5b)",
    )
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
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
