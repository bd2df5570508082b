"""Side-by-side report of several runs: a table and plots, as PNGs and one self-contained HTML page.

A run directory is what ``logitguard train`` (``train_log.json``, with an
evaluation ``summary.json`` in it or in ``eval/``), ``logitguard eval``
(``summary.json``) or ``logitguard demo`` (``results.json``, several models)
writes. matplotlib is imported only when plotting.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from logitguard.errors import LogitGuardError
from logitguard.io import atomic_write, read_text, write_text

Series = list[tuple[int, float]]
METRICS = {
    "harmful_refusal": "harmful refusal",
    "attack_success_rate": "attack success",
    "benign_over_refusal": "benign over-refusal",
    "task_accuracy": "task accuracy",
    "benign_skills": "benign skills",
}
LOSS_TERMS = ("loss", "task_loss", "str_anchor", "str_task")


@dataclass
class Run:
    """What the report shows of one model or fine-tuning run."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    refusal_curve: Series = field(default_factory=list)
    losses: dict[str, Series] = field(default_factory=dict)


def _read_json(path: Path, kind: type) -> object:
    """``path``'s JSON, which must be a ``kind`` (list or dict); anything else is an error naming the file."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise LogitGuardError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(value, kind):
        expected = "a list of log entries" if kind is list else "an object"
        raise LogitGuardError(f"{path}: expected {expected}, got {type(value).__name__}")
    return value


def _metrics(values: dict, source: Path) -> dict[str, float]:
    """The report's metrics among ``values``; a metric that is not a number is an error naming the file."""
    metrics = {}
    for key in METRICS:
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
        run.metrics = _metrics(_read_json(summary_path, dict), summary_path)
    if log_path.is_file():
        history = _read_json(log_path, list)
        if not all(isinstance(entry, dict) for entry in history):
            raise LogitGuardError(f"{log_path}: every log entry must be an object")
        run.losses = _losses(history, log_path)
        run.refusal_curve = _series(history, "safety/refusal_rate", log_path)
    return [run]


def _demo_runs(directory: Path) -> list[Run]:
    path = directory / "results.json"
    results = _read_json(path, dict)
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
            run.losses = _losses(_read_json(history, list), history)
        runs.append(run)
    return runs


def plot_refusal_curves(runs: list[Run], path: Path) -> Path | None:
    curves = [r for r in runs if r.refusal_curve]
    if not curves:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in curves:
        steps, rates = zip(*run.refusal_curve, strict=True)
        ax.plot(steps, [100 * r for r in rates], marker="o", label=_label(run.name))
    ax.set(
        xlabel="training step", ylabel="harmful prompts refused (%)", ylim=(-3, 103), title="Refusals during training"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_safety_vs_utility(runs: list[Run], path: Path) -> Path | None:
    points = [r for r in runs if "harmful_refusal" in r.metrics and "task_accuracy" in r.metrics]
    if not points:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for run in points:
        x, y = 100 * run.metrics["task_accuracy"], 100 * run.metrics["harmful_refusal"]
        ax.scatter(x, y, s=60)
        ax.annotate(_label(run.name), (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set(xlabel="task accuracy (%)", ylabel="harmful refusal (%)", xlim=(-5, 110), ylim=(-5, 110))
    ax.set_title("Safety against utility (top right is best)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_loss_terms(runs: list[Run], path: Path) -> Path | None:
    terms = [t for t in LOSS_TERMS if any(t in r.losses for r in runs)]
    if not terms:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(terms), figsize=(3.6 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms, strict=True):
        for run in runs:
            if term in run.losses:
                steps, values = zip(*run.losses[term], strict=True)
                ax.plot(steps, values, label=_label(run.name), linewidth=1)
        ax.set(title=term, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted rows (percentages; '—' where a run lacks a metric)."""
    keys = [k for k in METRICS if any(k in r.metrics for r in runs)]
    rows = [[r.name] + [f"{100 * r.metrics[k]:.1f}%" if k in r.metrics else "—" for k in keys] for r in runs]
    return ["run", *(METRICS[k] for k in keys)], rows


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
    plots = [
        plot_refusal_curves(runs, out / "refusal_over_steps.png"),
        plot_safety_vs_utility(runs, out / "safety_vs_utility.png"),
        plot_loss_terms(runs, out / "loss_terms.png"),
    ]
    return write_text(out / "report.html", render_html(runs, [p for p in plots if p is not None]))
