"""The ``logitguard`` command line: ``logitguard [--debug] COMMAND [options]``.

Each command lives in its own module under :mod:`logitguard.commands` with a ``main(argv)``; this file only
dispatches (so ``logitguard --help`` stays fast: heavy imports happen inside the command that needs them) and
is the one error boundary: bad input (:class:`~logitguard.errors.LogitGuardError`) and file-system errors
(``OSError``) end in one line on stderr naming the path or field, with exit code 2. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import sys

from logitguard.errors import LogitGuardError

COMMANDS = {
    "demo": "STR end to end on the embedded toy model: the problem and the fix",
    "tokens": "discover a chat model's safety tokens and cache its anchors",
    "select": "drop the training samples with the largest aligned-model gradients",
    "train": "fine-tune with LoRA + STR from a YAML run config (resumable)",
    "eval": "refusal, attack success, over-refusal and task utility",
    "report": "several runs side by side: a table and plots in one HTML page",
    "check": "check that a framework config (axolotl) will train with STR",
    "llamafactory-train": "LLaMA-Factory's supervised fine-tuning with STR (a logitguard: block in its YAML)",
}


def usage() -> str:
    lines = ["usage: logitguard [--debug] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<19} {summary}" for name, summary in COMMANDS.items()]
    lines += ["", "Run 'logitguard COMMAND --help' for a command's options; --debug shows tracebacks."]
    return "\n".join(lines)


def describe(error: BaseException) -> str:
    """One line for a bad input: the message, with the path an ``OSError`` names."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1]
    if debug:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"logitguard: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"logitguard.commands.{name.replace('-', '_')}")
    try:
        return module.main(rest)
    except (LogitGuardError, OSError) as error:
        if debug:
            raise
        print(f"logitguard {name}: error: {describe(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
