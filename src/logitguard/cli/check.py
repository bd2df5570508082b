"""``logitguard check``: prove before a long run that a framework config will train with STR.

Run: logitguard check axolotl cfg.yml

Axolotl only logs a plugin it cannot import, drops its keys and trains without it; and the first plugin that
returns a trainer class wins. This command fails (exit code 2, one line) when LogitGuard's plugin is missing or
misspelled in ``plugins:``, cannot be imported, its ``logitguard:`` block is invalid, or another plugin listed
before it would provide the trainer.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from logitguard.cli.common import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="logitguard check", description=__doc__.split("\n\n")[0])
    parser.add_argument("framework", choices=["axolotl"])
    parser.add_argument("config", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(check_axolotl(args.config))
    return 0


def check_axolotl(path: Path) -> str:
    """A one-line verdict when the config will train with STR; a LogitGuardError naming the problem otherwise."""
    from logitguard.errors import LogitGuardError
    from logitguard.io import read_text
    from logitguard.settings import read_yaml_mapping

    cfg, _ = read_yaml_mapping(read_text(path), path, "an Axolotl config is a mapping")
    plugins = cfg.get("plugins") or []
    try:
        from logitguard.integrations.axolotl import PLUGIN, LogitGuardArgs, LogitGuardPlugin, settings_from
    except ImportError as e:
        raise LogitGuardError(
            f"the LogitGuard Axolotl plugin cannot be imported ({e}); is axolotl installed?"
        ) from None
    if PLUGIN not in plugins:
        near = [p for p in plugins if "logitguard" in str(p).lower()]
        hint = f" ({near[0]!r} is not it: Axolotl would log it and train WITHOUT STR)" if near else ""
        raise LogitGuardError(f"{path}: plugins does not list {PLUGIN}{hint}")
    from pydantic import ValidationError

    try:  # the schema Axolotl will apply
        LogitGuardArgs.model_validate({"logitguard": cfg.get("logitguard") or {}})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise LogitGuardError(f"{path}: {problems}") from None
    settings = settings_from(cfg)
    if not settings.enabled:
        raise LogitGuardError(f"{path}: logitguard.enabled is false, so STR will NOT run")
    for name in plugins[: plugins.index(PLUGIN)]:
        module_name, class_name = str(name).rsplit(".", 1)
        try:
            plugin = getattr(importlib.import_module(module_name), class_name)()
        except (ImportError, AttributeError) as e:
            raise LogitGuardError(
                f"{path}: plugin {name!r}, listed before LogitGuard's, cannot be loaded ({e})"
            ) from None
        if plugin.get_trainer_cls(_Config(cfg)) is not None:
            raise LogitGuardError(
                f"{path}: plugin {name!r} provides the trainer and is listed before LogitGuard's, so its trainer would "
                "win and STR would not run; list LogitGuard's plugin first"
            )
    LogitGuardPlugin().get_trainer_cls(_Config(cfg))  # its own checks (supervised fine-tuning, no packing)
    config = settings.str_config()
    return f"{path}: STR will run ({config.penalty}, λ={config.weight}, reference {config.reference})"


class _Config(dict):
    """A plain dict with attribute access, as Axolotl's DictDefault gives plugins (missing keys are None)."""

    def __getattr__(self, name: str):
        return self.get(name)
