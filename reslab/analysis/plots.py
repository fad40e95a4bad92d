"""The experiments' own figures: Fig. 7's layout (response std per layer, in layer order and sorted)
and Table 6 as a plot (error by depth, every seed)."""

from __future__ import annotations

from pathlib import Path

from ..plots import plt, save  # the Agg-configured pyplot
from .responses import LayerResponse


def response_figure(results: dict[str, list[LayerResponse]], path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6))
    for label, responses in results.items():
        stds = [r.std for r in responses]
        top.plot(range(1, len(stds) + 1), stds, marker=".", label=label)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), marker=".", label=label)
    top.set_xlabel("layer index (original order)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    return save(fig, path)


def errors_by_depth(seed_errors: dict[int, tuple[float, ...]], paper: dict[int, float], path: Path) -> Path:
    """Validation error (fractions, one per seed) against depth: every seed as a dot, the means joined,
    and the paper's test errors (percent) beside them when given. The paper's numbers come from the
    full schedule on the original images, so compare the shapes of the two lines, not their heights."""
    fig, ax = plt.subplots(figsize=(6, 4))
    depths = sorted(seed_errors)
    for d in depths:
        ax.plot([d] * len(seed_errors[d]), [100 * e for e in seed_errors[d]], ".", color="tab:blue", alpha=0.6)
    means = [100 * sum(seed_errors[d]) / len(seed_errors[d]) for d in depths]
    ax.plot(depths, means, "-o", color="tab:blue", label="reslab, validation (mean; dots: seeds)")
    known = [d for d in depths if d in paper]
    if known:
        ax.plot(known, [paper[d] for d in known], "--s", color="tab:gray", label="paper, test (full schedule)")
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("error %")
    ax.set_xticks(depths)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
