"""The ``logitguard`` command line: ``logitguard [--debug] COMMAND [options]``.

Each command lives in its own module with a ``main(argv)``: the library's commands in :mod:`logitguard.cli`, and
commands that other packages plug in through the ``logitguard.commands`` entry-point group (the demo is one: it
belongs to the lab, :mod:`logitguard.lab`, which the CLI never imports). This file only dispatches (so
``logitguard --help`` stays fast: heavy imports happen inside the command that needs them) and is the one error
boundary: bad input (:class:`~logitguard.errors.LogitGuardError`) and file-system errors (``OSError``) end in one
line on stderr naming the path or field, with exit code 2 (3 for a run the safety monitor stopped); Ctrl-C ends in
one line saying the run was interrupted (exit code 130). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

from logitguard.errors import LogitGuardError

COMMANDS = {
    "tokens": "discover a chat model's safety tokens and cache its anchors",
    "select": "drop the training samples with the largest aligned-model gradients",
    "train": "fine-tune with LoRA + STR from a YAML run config (resumable)",
    "eval": "refusal, attack success, over-refusal and task utility",
    "report": "several runs side by side: a table and plots in one HTML page",
    "check": "check that a framework config (axolotl) will train with STR",
    "llamafactory-train": "LLaMA-Factory's supervised fine-tuning with STR (a logitguard: block in its YAML)",
}
PLUGIN_GROUP = "logitguard.commands"


def plugged_in() -> dict[str, str]:
    """Commands other packages add: name -> module (``[project.entry-points."logitguard.commands"]``)."""
    return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP) if ep.name not in COMMANDS}


def module_of(name: str) -> str | None:
    if name in COMMANDS:
        return f"logitguard.cli.{name.replace('-', '_')}"
    return plugged_in().get(name)


def usage() -> str:
    lines = ["usage: logitguard [--debug] COMMAND [options]", "", "commands:"]
    summaries = dict(COMMANDS)
    for name, module in plugged_in().items():  # a plug-in's summary: the first line of its module docstring
        doc = importlib.import_module(module).__doc__ or ""
        summaries[name] = doc.split("\n")[0].split(": ", 1)[-1].rstrip(".")
    lines += [f"  {name:<19} {summary}" for name, summary in summaries.items()]
    lines += ["", "Run 'logitguard COMMAND --help' for a command's options; --debug shows tracebacks."]
    return "\n".join(lines)


def close_progress_bars() -> None:
    """End any progress bar a failed command left open, so its error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()


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
    module_name = module_of(name)
    if module_name is None:
        print(f"logitguard: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(module_name).main(rest)
    except SystemExit as done:  # argparse's --help (0) and usage errors (2, already printed as one line)
        return done.code if isinstance(done.code, int) else 2
    except (LogitGuardError, OSError) as error:
        if debug:
            raise
        close_progress_bars()
        print(f"logitguard {name}: error: {describe(error)}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt:
        if debug:
            raise
        close_progress_bars()
        print(f"logitguard {name}: interrupted; what it had written completely is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
