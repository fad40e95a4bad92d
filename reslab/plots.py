"""Figures in the style of the paper's: training error dashed, test/validation error solid,
against iterations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def save(fig: Any, path: Path) -> Path:
    """Write a finished figure (laid out, 120 dpi) and free it: figures are made in loops, and pyplot
    keeps every open one alive."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _draw_curves(ax: Any, histories: dict[str, list[dict[str, Any]]], title: str | None) -> None:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, history) in enumerate(histories.items()):
        color = colors[i % len(colors)]
        steps = [row["step"] for row in history]
        ax.plot(steps, [100 * row["train_error"] for row in history], "--", color=color, linewidth=1)
        evals = [(row["step"], 100 * row["eval_error"]) for row in history if row.get("eval_error") is not None]
        if evals:
            ax.plot(*zip(*evals), "-", color=color, linewidth=2, label=label)
        else:
            ax.plot([], [], "-", color=color, linewidth=2, label=label)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="dashed: training, solid: evaluation", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)


def error_curves(histories: dict[str, list[dict[str, Any]]], path: Path, title: str | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    _draw_curves(ax, histories, title)
    return save(fig, path)


def error_curve_panels(panels: Sequence[tuple[str, dict[str, list[dict[str, Any]]]]], path: Path) -> Path:
    """Several panels side by side with a shared y axis (the layout of paper Fig. 6)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (title, histories) in zip(axes[0], panels):
        _draw_curves(ax, histories, title)
    return save(fig, path)


def confusion_matrix(matrix: Any, classes: Sequence[str], path: Path) -> Path:
    size = max(4, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(matrix[i][j]), ha="center", va="center", fontsize=6)
    return save(fig, path)
