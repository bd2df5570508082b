"""The house rules of the source tree: the library and the CLI never import the lab, no module imports a layer above
its own, and DEVELOPERS.md's layout table is the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "logitguard"
# Lowest first: a module may import its own layer and those below it, never one above.
LAYERS = [
    {"errors", "io", "fingerprints", "domains", "outputs"},
    {"data"},
    {"core"},
    {"settings", "models"},
    {"evaluation", "baselines"},
    {"artifacts"},
    {"selection", "hosts"},
    {"integrations"},
    {"cli"},
    {"lab"},
]
LAYER = {group: level for level, groups in enumerate(LAYERS) for group in groups}


def group_of(module: str) -> str | None:
    """``logitguard.core.objective`` -> ``core``; the package itself and its private helpers have none."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "logitguard" and not parts[1].startswith("_") else None


def imports(path: Path) -> set[str]:
    """Every ``logitguard`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("logitguard")}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``__init__`` files as their package)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_the_library_and_the_cli_never_import_the_lab():
    offenders = [
        f"{name} imports {target}"
        for name, path in modules().items()
        if group_of(name) != "lab"
        for target in imports(path)
        if group_of(target) == "lab"
    ]
    assert not offenders, offenders


def test_no_module_imports_a_layer_above_its_own():
    known = set(LAYER) | {None}
    groups = {group_of(name) for name in modules()}
    assert groups <= known, f"put {groups - known} into a layer"
    offenders = []
    for name, path in modules().items():
        group = group_of(name)
        if group is None:
            continue
        for target in imports(path):
            target_group = group_of(target)
            if target_group in LAYER and LAYER[target_group] > LAYER[group]:
                offenders.append(f"{name} ({group}) imports {target} ({target_group})")
    assert not offenders, offenders


def test_benchmarks_are_imported_by_nothing_in_the_package():
    assert not [n for n, p in modules().items() if any(t.startswith("benchmarks") for t in imports(p))]


def test_the_developers_layout_table_is_the_tree():
    """Every package and top-level module is in DEVELOPERS.md's layout table, and every path it names exists."""
    text = (ROOT / "DEVELOPERS.md").read_text()
    table = text[text.index("## Layout") :]
    named = set(re.findall(r"`(src/logitguard/[\w/.-]+)`", table))
    for path in named:
        assert (ROOT / path).exists(), f"DEVELOPERS.md names {path}, which does not exist"
    shown = {p.rstrip("/") for p in named}
    entries = [p for p in PACKAGE.iterdir() if not p.name.startswith(("_", ".")) and p.suffix in ("", ".py")]
    missing = [p.name for p in entries if f"src/logitguard/{p.name}" not in shown]
    assert not missing, f"add {missing} to DEVELOPERS.md's layout table"
