"""Regenerate every table of the documentation from the results JSON, so no number in the docs drifts from them.

Run: python -m benchmarks.tables            (rewrite the tables in README.md, benchmarks/ and docs/*.md)
     python -m benchmarks.tables --check    (exit 1 if a table differs from its JSON; a test runs this)

A table is a block ``<!-- table: KIND [ARGS] -->`` ... ``<!-- /table -->``; KIND is ``methods FILE SCENARIO
[costs=off] [rows=NAME|NAME...]`` (the toy's methods.json or str_settings.json, optionally without the time and
memory columns and only the rows named),
``real FILE SCENARIO [rows=...]`` (real_smollm2.json), ``qwen FILE SCENARIO [rows=...]`` (real_qwen.json), or the
name of a benchmark with a ``table`` function of its own results JSON (``KIND.json``, or ``KIND FILE``):
``str_overhead``, ``regularizer_cost``, ``refusal_detector``, ``refusal_by_phrasing``, ``selection_breakdown``,
``build_smollm2_safe``, ``aligned_sweep``, ``refusal_by_set``, ``real_qwen`` (each evaluation set's rate).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    ROOT / "benchmarks" / "CHANGELOG.md",
    *sorted((ROOT / "benchmarks" / "docs").glob("*.md")),
    *sorted((ROOT / "docs").glob("*.md")),
]
BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


MISSING = "_No results yet: run the command above._"
NO_RUNS = "_No runs of this scenario yet._"
BENCHMARK_OF = {"methods": "methods", "real": "real_smollm2", "qwen": "real_qwen"}  # method-comparison tables


def render(spec: str) -> str:
    """The markdown of one table block's spec (a note, when its results file does not exist yet)."""
    kind, *args = spec.split(maxsplit=3)
    results = RESULTS / (args[0] if args else f"{kind}.json")
    if not results.is_file():
        return MISSING
    if kind in ("methods", "real", "qwen"):
        from benchmarks.harness import scenario_table

        module = importlib.import_module(f"benchmarks.{BENCHMARK_OF[kind]}")
        rest = args[2] if len(args) > 2 else ""
        costs = module.COSTS and not rest.startswith("costs=off")
        rest = rest.removeprefix("costs=off").strip()
        rows = rest.removeprefix("rows=").split("|") if rest else None
        return scenario_table(results, module.ROWS, module.METRICS, args[1], rows, costs) or NO_RUNS
    module = importlib.import_module(f"benchmarks.{kind}")
    return module.table(json.loads(results.read_text(encoding="utf-8")))


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("spec")) + "\n" + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report tables that differ from the JSON; change nothing")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        new = regenerate(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "differ from their JSON" if args.check else "regenerated"
    print(f"tables {verb}: {', '.join(str(p.relative_to(ROOT)) for p in stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
