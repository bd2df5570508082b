"""Every plot LogitGuard draws, from plain numbers (matplotlib is imported only here, and only when drawing).

* :func:`plot_refusal_curves`: harmful refusal against training step, one line per run;
* :func:`plot_refusal_vs_over_refusal`: each method at its (over-refusal, refusal) point beside the aligned
  model, the two failures a user fears side by side (top left is best);
* :func:`plot_safety_vs_utility`: harmful refusal against task accuracy (top right is best);
* :func:`plot_loss_terms`: each loss term against step, one panel per term.

Points and curves are fractions (0-1); the axes show percentages. Each function writes a PNG atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from logitguard.io import atomic_write

Series = Sequence[tuple[int, float]]  # (step, value)
Points = Mapping[str, Sequence[tuple[float, float]]]  # label -> (x, y) points, e.g. one per seed
MARKERS = "osD^v<>PX*"
ALIGNED_STYLE = {"marker": "x", "color": "black"}  # the aligned model's cross, in its panels and the legend


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def plot_refusal_curves(curves: Mapping[str, Series], path: Path, title: str = "Refusals during fine-tuning") -> Path:
    """Harmful refusal (refusals that end) against training step, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in curves.items():
        steps, rates = zip(*curve, strict=True)
        ax.plot(steps, [100 * r for r in rates], marker="o", label=name)
    ax.set(xlabel="training step", ylabel="harmful refusal (%)", ylim=(-3, 103), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _style(i: int) -> dict:
    """The marker and colour of the ``i``-th label (the same in every panel)."""
    return {"marker": MARKERS[i % len(MARKERS)], "color": f"C{i % 10}"}


def _scatter(ax, points: Points, labels: list[str]) -> None:
    """``points`` in percent, each label in the style of its place in ``labels``."""
    for label, xy in points.items():
        xs, ys = zip(*xy, strict=True)
        ax.scatter([100 * x for x in xs], [100 * y for y in ys], s=55, **_style(labels.index(label)))


def _labels(panels: Mapping[str, Points]) -> list[str]:
    return list(dict.fromkeys(label for points in panels.values() for label in points))


def legend_entries(panels: Mapping[str, Points], aligned: bool = False) -> list[tuple[str, dict]]:
    """The figure's one legend: every label of every panel in the style its points have (a method present in one
    panel only is named too), then the aligned model's cross."""
    entries = [(label, _style(i)) for i, label in enumerate(_labels(panels))]
    return entries + ([("aligned model", ALIGNED_STYLE)] if aligned else [])


def _figure_legend(fig, panels: Mapping[str, Points], aligned: bool = False) -> None:
    """:func:`legend_entries` below the panels."""
    from matplotlib.lines import Line2D

    entries = legend_entries(panels, aligned)
    handles = [Line2D([], [], linestyle="", markersize=7, **style) for _, style in entries]
    ncol = min(len(entries), 3)
    fig.legend(
        handles, [name for name, _ in entries], loc="upper center", bbox_to_anchor=(0.5, 0), ncol=ncol, fontsize=8
    )


def plot_refusal_vs_over_refusal(
    panels: Mapping[str, Points], path: Path, aligned: tuple[float, float] | None = None
) -> Path:
    """One panel per scenario: each method's (over-refusal, harmful refusal) points, and the aligned model's as a
    cross with guide lines: a method should stay at or above its refusal and at or left of its over-refusal."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    labels = _labels(panels)
    for ax, (title, points) in zip(axes[0], panels.items(), strict=True):
        _scatter(ax, points, labels)
        if aligned is not None:
            x, y = 100 * aligned[0], 100 * aligned[1]
            ax.scatter([x], [y], s=90, **ALIGNED_STYLE)
            ax.axhline(y, color="black", linewidth=0.6, linestyle=":")
            ax.axvline(x, color="black", linewidth=0.6, linestyle=":")
        ax.set(xlabel="over-refusal (%)", ylabel="harmful refusal (%)", xlim=(-5, 105), ylim=(-5, 105), title=title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _figure_legend(fig, panels, aligned is not None)
    return save_figure(fig, path)


def plot_safety_vs_utility(panels: Mapping[str, Points], path: Path, task: str = "task accuracy") -> Path:
    """One panel per scenario: each method's (task accuracy, harmful refusal) points (top right is best)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    labels = _labels(panels)
    for ax, (title, points) in zip(axes[0], panels.items(), strict=True):
        _scatter(ax, points, labels)
        ax.set(xlabel=f"{task} (%)", ylabel="harmful refusal (%)", xlim=(-5, 105), ylim=(-5, 105), title=title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _figure_legend(fig, panels)
    return save_figure(fig, path)


def plot_loss_terms(losses: Mapping[str, Mapping[str, Series]], path: Path) -> Path:
    """``losses[run][term]`` against step: one panel per term, one line per run."""
    plt = _pyplot()
    terms = list(dict.fromkeys(term for run in losses.values() for term in run))
    fig, axes = plt.subplots(1, len(terms), figsize=(3.6 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms, strict=True):
        for name, run in losses.items():
            if term in run:
                steps, values = zip(*run[term], strict=True)
                ax.plot(steps, values, label=name, linewidth=1)
        ax.set(title=term, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
