"""Side-by-side report of several runs: a table and plots, as PNGs and one self-contained HTML page.

A run directory is what ``logitguard train`` (``train_log.json``, with an
evaluation ``summary.json`` in it or in ``eval/``), ``logitguard eval``
(``summary.json``) or ``logitguard demo`` (``results.json``, several models)
writes. matplotlib is imported only when plotting.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from logitguard.errors import LogitGuardError
from logitguard.evaluation.metrics import METRICS
from logitguard.evaluation.plots import (
    plot_loss_terms,
    plot_refusal_curves,
    plot_refusal_vs_over_refusal,
    plot_safety_vs_utility,
)
from logitguard.io import read_json, write_text

Series = list[tuple[int, float]]
SHOWN = (  # the metrics a report shows, in this order (labels: logitguard.evaluation.metrics.METRICS)
    "harmful_refusal",
    "attack_success_rate",
    "lookalike_over_refusal",
    "benign_over_refusal",
    "task_accuracy",
    "benign_skills",
)
LOSS_TERMS = ("loss", "task_loss", "str_anchor", "str_task")


@dataclass
class Run:
    """What the report shows of one model or fine-tuning run."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    refusal_curve: Series = field(default_factory=list)
    losses: dict[str, Series] = field(default_factory=dict)


def _metrics(values: dict, source: Path) -> dict[str, float]:
    """The report's metrics among ``values``; a metric that is not a number is an error naming the file."""
    metrics = {}
    for key in SHOWN:
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LogitGuardError(f"{source}: {key} must be a number, got {value!r}")
            metrics[key] = float(value)
    return metrics


def _label(text: str) -> str:
    """A run name as matplotlib shows it literally (a ``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def _series(history: list[dict], key: str, source: Path) -> Series:
    """``(step, value)`` of every log entry that has ``key``; a value or step that is not a number names the file."""
    series = []
    for entry in history:
        if key not in entry:
            continue
        step, value = entry.get("step"), entry[key]
        for name, number in (("step", step), (key, value)):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise LogitGuardError(f"{source}: an entry's {name} must be a number, got {number!r}")
        series.append((int(step), float(value)))
    return series


def _losses(history: list[dict], source: Path) -> dict[str, Series]:
    """Loss terms over steps; a term that is 0 throughout (an STR term of a plain SFT run) is left out."""
    terms = {term: _series(history, term, source) for term in LOSS_TERMS}
    return {term: series for term, series in terms.items() if any(value for _, value in series)}


def load_runs(directory: str | Path) -> list[Run]:
    """The runs in one directory; an error naming it when it holds no results."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such run directory")
    if (directory / "results.json").is_file():
        return _demo_runs(directory)
    summary_path = next(
        (p for p in (directory / "summary.json", directory / "eval" / "summary.json") if p.is_file()), None
    )
    log_path = directory / "train_log.json"
    if summary_path is None and not log_path.is_file():
        raise LogitGuardError(f"{directory}: no results (expected results.json, train_log.json or summary.json)")
    run = Run(directory.name)
    if summary_path is not None:
        run.metrics = _metrics(read_json(summary_path, dict, "an evaluation summary"), summary_path)
    if log_path.is_file():
        history = read_json(log_path, list, "a training log")
        if not all(isinstance(entry, dict) for entry in history):
            raise LogitGuardError(f"{log_path}: every log entry must be an object")
        run.losses = _losses(history, log_path)
        run.refusal_curve = _series(history, "safety/refusal_rate", log_path)
    return [run]


def _demo_runs(directory: Path) -> list[Run]:
    path = directory / "results.json"
    results = read_json(path, dict, "demo results")
    if not isinstance(results.get("models"), dict) or not all(isinstance(m, dict) for m in results["models"].values()):
        raise LogitGuardError(f"{path}: expected the 'models' of a logitguard demo run")
    runs = []
    for name, metrics in results["models"].items():
        run = Run(name, _metrics(metrics, path))
        curve = results.get("refusal_curves", {}).get(name, [])
        if not isinstance(curve, list) or not all(isinstance(c, dict) for c in curve):
            raise LogitGuardError(f"{path}: refusal_curves.{name} must be a list of objects")
        run.refusal_curve = _series(curve, "harmful_refusal", path)
        history = directory / name / "history.json"
        if history.is_file():
            run.losses = _losses(read_json(history, list, "a training log"), history)
        runs.append(run)
    return runs


def table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted rows (percentages; '—' where a run lacks a metric)."""
    keys = [k for k in SHOWN if any(k in r.metrics for r in runs)]
    rows = [[r.name] + [f"{100 * r.metrics[k]:.1f}%" if k in r.metrics else "—" for k in keys] for r in runs]
    return ["run", *(METRICS[k].label for k in keys)], rows


def render_html(runs: list[Run], images: list[Path]) -> str:
    header, rows = table(runs)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in images
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "figure{display:inline-block;margin:1em 1em 0 0}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>LogitGuard report</title><style>{style}</style>"
        f"</head><body><h1>LogitGuard report</h1><table><tr>{head}</tr>{body}</table>{figures}</body></html>\n"
    )


def collect_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Every run of every directory; names shared across directories get the directory as a prefix."""
    directories = [Path(d) for d in run_dirs]
    resolved = [d.resolve() for d in directories]
    if len(set(resolved)) != len(resolved):
        raise LogitGuardError("a run directory is given twice")
    loaded = [(d, load_runs(d)) for d in directories]
    names = [r.name for _, runs in loaded for r in runs]
    if len(set(names)) == len(names):
        return [r for _, runs in loaded for r in runs]
    prefixes = _shortest_unique_suffixes(resolved)
    return [
        Run(prefix if r.name == d.name else f"{prefix}/{r.name}", r.metrics, r.refusal_curve, r.losses)
        for prefix, (d, runs) in zip(prefixes, loaded, strict=True)
        for r in runs
    ]


def _shortest_unique_suffixes(paths: list[Path]) -> list[str]:
    """For each path, its fewest trailing components that tell it from the others (``a/sft``, ``b/sft``)."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        suffixes = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(suffixes)) == len(suffixes):
            return suffixes
    return [str(p) for p in paths]


def write_report(runs: list[Run], out: str | Path) -> Path:
    """Write the PNGs and ``report.html`` into ``out``; returns the HTML path."""
    out = Path(out)
    plots = []
    curves = {_label(r.name): r.refusal_curve for r in runs if r.refusal_curve}
    if curves:
        plots.append(plot_refusal_curves(curves, out / "refusal_over_steps.png", "Refusals during training"))
    safety = [r for r in runs if "harmful_refusal" in r.metrics]
    if over := {
        _label(r.name): [_pair(r, "benign_over_refusal")] for r in safety if "benign_over_refusal" in r.metrics
    }:
        plots.append(plot_refusal_vs_over_refusal({"refusal against over-refusal": over}, out / "refusal_vs_over.png"))
    if utility := {_label(r.name): [_pair(r, "task_accuracy")] for r in safety if "task_accuracy" in r.metrics}:
        plots.append(plot_safety_vs_utility({"safety against utility": utility}, out / "safety_vs_utility.png"))
    if losses := {_label(r.name): r.losses for r in runs if r.losses}:
        plots.append(plot_loss_terms(losses, out / "loss_terms.png"))
    return write_text(out / "report.html", render_html(runs, plots))


def _pair(run: Run, x_key: str) -> tuple[float, float]:
    return run.metrics[x_key], run.metrics["harmful_refusal"]
