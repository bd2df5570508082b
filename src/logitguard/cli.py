"""The ``logitguard`` command line: ``logitguard COMMAND [options]``.

Each command lives in its own module with a ``main(argv)``; this file only
dispatches, so ``logitguard --help`` stays fast (heavy imports happen inside
the command that needs them).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("logitguard.demo", "STR end to end on the embedded toy model: the problem and the fix"),
    "tokens": ("logitguard.commands.tokens", "discover a chat model's safety tokens and save the artifact"),
    "select": ("logitguard.commands.select", "drop the training samples with the largest aligned-model gradients"),
    "train": ("logitguard.commands.train", "fine-tune with LoRA + STR from a YAML run config (resumable)"),
    "eval": ("logitguard.commands.eval", "refusal, attack success, over-refusal and task utility"),
    "report": ("logitguard.commands.report", "several runs side by side: a table and plots in one HTML page"),
}


def usage() -> str:
    lines = ["usage: logitguard COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'logitguard COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"logitguard: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
