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
from logitguard.io import atomic_write, write_text

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


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LogitGuardError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def _losses(history: list[dict]) -> dict[str, Series]:
    """Loss terms over steps; a term that is 0 throughout (an STR term of a plain SFT run) is left out."""
    terms: dict[str, Series] = {}
    for entry in history:
        for term in LOSS_TERMS:
            if term in entry and "step" in entry:
                terms.setdefault(term, []).append((int(entry["step"]), float(entry[term])))
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
        summary = _read_json(summary_path)
        run.metrics = {k: float(v) for k, v in summary.items() if k in METRICS}
    if log_path.is_file():
        history = _read_json(log_path)
        run.losses = _losses(history)
        run.refusal_curve = [
            (int(e["step"]), float(e["safety/refusal_rate"])) for e in history if "safety/refusal_rate" in e
        ]
    return [run]


def _demo_runs(directory: Path) -> list[Run]:
    results = _read_json(directory / "results.json")
    if not isinstance(results, dict) or "models" not in results:
        raise LogitGuardError(f"{directory / 'results.json'}: expected the 'models' of a logitguard demo run")
    runs = []
    for name, metrics in results["models"].items():
        run = Run(name, {k: float(v) for k, v in metrics.items() if k in METRICS})
        run.refusal_curve = [(c["step"], c["harmful_refusal"]) for c in results.get("refusal_curves", {}).get(name, [])]
        history = directory / name / "history.json"
        if history.is_file():
            run.losses = _losses(_read_json(history))
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
        ax.plot(steps, [100 * r for r in rates], marker="o", label=run.name)
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
        ax.annotate(run.name, (x, y), textcoords="offset points", xytext=(6, 4))
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
                ax.plot(steps, values, label=run.name, linewidth=1)
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
    loaded = [(Path(d), load_runs(d)) for d in run_dirs]
    names = [r.name for _, runs in loaded for r in runs]
    if len(set(names)) == len(names):
        return [r for _, runs in loaded for r in runs]
    return [Run(f"{d.name}/{r.name}", r.metrics, r.refusal_curve, r.losses) for d, runs in loaded for r in runs]


def write_report(runs: list[Run], out: str | Path) -> Path:
    """Write the PNGs and ``report.html`` into ``out``; returns the HTML path."""
    out = Path(out)
    plots = [
        plot_refusal_curves(runs, out / "refusal_over_steps.png"),
        plot_safety_vs_utility(runs, out / "safety_vs_utility.png"),
        plot_loss_terms(runs, out / "loss_terms.png"),
    ]
    return write_text(out / "report.html", render_html(runs, [p for p in plots if p is not None]))
