"""``logitguard llamafactory-train``: LLaMA-Factory's supervised fine-tuning with STR.

Run: logitguard llamafactory-train cfg.yaml
(the usual LLaMA-Factory YAML plus a ``logitguard:`` block with the keys of ``logitguard train``'s ``str:`` section;
an example: ``configs/frameworks/llamafactory_qwen2.5_1.5b_lora_str.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from logitguard.cli.common import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="logitguard llamafactory-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="LLaMA-Factory YAML with a logitguard: block")
    args = parser.parse_args(argv)
    from logitguard.integrations.llamafactory import run

    run(args.config)
    return 0
