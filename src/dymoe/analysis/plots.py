"""Figures of a continual run: the accuracy matrix, per-task curves, and a per-task radar of several methods.

Pure functions: data in, a PNG written (atomically) and its path returned. They use matplotlib's object API with
the Agg canvas (``matplotlib.figure.Figure``), so nothing touches pyplot's global state or needs a display, and
they are safe to call from worker threads. The image is exactly ``figsize * dpi`` pixels (no tight bounding box).

Matrix convention as in :mod:`dymoe.eval.metrics`: ``matrix[j][i]`` = accuracy (percent) on task ``i`` after
training task ``j``, lower-triangular; ``tasks`` may be longer than the matrix (a run in progress).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dymoe.errors import DataError
from dymoe.eval.metrics import validate_matrix
from dymoe.io import atomic_writer

__all__ = ["plot_accuracy_matrix", "plot_radar", "plot_task_curves"]

Matrix = Sequence[Sequence[float]]


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as PNG to ``path`` through a temp file in the same folder, then ``os.replace``."""
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return Path(path)


def _checked(tasks: Sequence[str], matrix: Matrix) -> list[list[float]]:
    if not tasks:
        raise DataError("no task names to plot")
    return validate_matrix([list(r) for r in matrix], list(tasks))


def plot_accuracy_matrix(
    tasks: Sequence[str],
    matrix: Matrix,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Heatmap of the lower-triangular accuracy matrix, each cell annotated with its value.

    Rows are "after <task j>" (one per trained task), columns are all ``tasks`` (untrained ones stay empty);
    the colour scale is fixed to [0, 100] so figures of different runs compare. Default size grows with the
    number of tasks: ``(max(4.5, 0.95 T + 2.5), max(3.5, 0.7 R + 2.0))`` inches for ``T`` tasks and ``R`` rows.
    """
    rows = _checked(tasks, matrix)
    n_rows, n_cols = len(rows), len(tasks)
    grid = np.full((n_rows, n_cols), np.nan)  # [R, T]; NaN above the diagonal
    for j, row in enumerate(rows):
        grid[j, : len(row)] = row
    if figsize is None:
        figsize = (max(4.5, 0.95 * n_cols + 2.5), max(3.5, 0.7 * n_rows + 2.0))
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    for j in range(n_rows):
        for i in range(len(rows[j])):
            value = rows[j][i]
            # dark text on the bright (yellow) end of viridis, light text elsewhere
            ax.text(i, j, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 60.0 else "white")
    ax.set_xticks(range(n_cols), labels=list(tasks), rotation=40, ha="right")
    ax.set_yticks(range(n_rows), labels=[f"after {t}" for t in tasks[:n_rows]])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("training step")
    ax.set_title(title or "Accuracy matrix (%)")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, path, dpi)


def plot_task_curves(
    tasks: Sequence[str],
    matrix: Matrix,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (7.0, 4.5),
    dpi: int = 100,
) -> Path:
    """Accuracy of each task across the training sequence: one line per task, from the step it was learned.

    The x axis is the training step (labelled with the task trained at that step), the y axis accuracy in
    [0, 100]; task ``i``'s line holds ``matrix[j][i]`` for ``j >= i`` (a single marker for the last task).
    """
    rows = _checked(tasks, matrix)
    n = len(rows)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    colors = [f"C{k % 10}" for k in range(n)]
    for i in range(n):
        steps = list(range(i, n))
        ax.plot(steps, [rows[j][i] for j in steps], marker="o", color=colors[i], label=tasks[i])
    ax.set_xticks(range(n), labels=list(tasks[:n]), rotation=30, ha="right")
    ax.set_xlim(-0.3, n - 0.7)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel("after training")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Per-task accuracy across the sequence")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path, dpi)


def plot_radar(
    results: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 6.0),
    dpi: int = 100,
) -> Path:
    """Per-task final accuracy of several methods as a radar chart (LLaVA-DyMoE Fig. 3 style).

    Args:
        results: ``{label: {task: accuracy in [0, 100]}}``; every method must have the same tasks. The axes
            follow the task order of the first method, clockwise from the top, on one shared [0, 100] scale.

    Raises:
        DataError: no methods, a method with missing/extra tasks, or a value outside [0, 100].
    """
    if not results:
        raise DataError("plot_radar: no methods to plot")
    labels = list(results)
    tasks = list(results[labels[0]])
    if not tasks:
        raise DataError(f"plot_radar: method {labels[0]!r} has no tasks")
    for label in labels:
        got = set(results[label])
        if got != set(tasks):
            missing, extra = sorted(set(tasks) - got), sorted(got - set(tasks))
            raise DataError(f"plot_radar: method {label!r} has missing tasks {missing} / extra tasks {extra}")
        for t in tasks:
            v = results[label][t]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 100.0:
                raise DataError(f"plot_radar: method {label!r} task {t!r} is {v!r}, expected a percentage")
    # one axis per task, clockwise from 12 o'clock; the polygon repeats its first vertex to close
    angles = [2 * math.pi * k / len(tasks) for k in range(len(tasks))]
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_offset(math.pi / 2)
    ax.set_theta_direction(-1)
    for k, label in enumerate(labels):
        values = [float(results[label][t]) for t in tasks]
        ax.plot(angles + angles[:1], values + values[:1], color=f"C{k % 10}", linewidth=1.6, label=label)
        ax.fill(angles + angles[:1], values + values[:1], color=f"C{k % 10}", alpha=0.12)
    ax.set_xticks(angles, labels=tasks)
    ax.set_ylim(0.0, 100.0)
    ax.set_yticks([20, 40, 60, 80, 100], labels=["20", "40", "60", "80", "100"], fontsize=7)
    ax.set_title(title or "Per-task final accuracy (%)")
    ax.legend(loc="upper right", bbox_to_anchor=(1.15, 1.1), fontsize=8)
    return _save(fig, path, dpi)
