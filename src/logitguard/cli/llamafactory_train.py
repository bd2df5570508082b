"""``logitguard llamafactory-train``: LLaMA-Factory's supervised fine-tuning with STR.

Run: logitguard llamafactory-train cfg.yaml
(the usual LLaMA-Factory YAML plus a ``logitguard:`` block with the keys of ``logitguard train``'s ``str:`` section;
an example: ``configs/frameworks/llamafactory_qwen2.5_1.5b_lora_str.yaml``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from logitguard.cli.common import ArgumentParser
from logitguard.errors import LogitGuardError


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="logitguard llamafactory-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="LLaMA-Factory YAML with a logitguard: block")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("llamafactory") is None:
        raise LogitGuardError(
            "LLaMA-Factory is not installed here: pip install llamafactory==0.9.5 (the tested version)"
        )
    from logitguard.integrations.llamafactory import run

    run(args.config)
    return 0
