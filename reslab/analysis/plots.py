"""Figure 7's layout: response std per layer in layer order (top) and sorted (bottom)."""

from __future__ import annotations

from pathlib import Path

from ..plots import plt  # the Agg-configured pyplot
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
