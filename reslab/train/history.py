"""Per-epoch metrics: kept in the checkpoint, mirrored to metrics.jsonl and metrics.csv (and
TensorBoard when installed). The files are rewritten whole and atomically from the history, so a
resumed run's files always match its checkpoint."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_error", "eval_loss", "eval_error", "eval_top5_error",
           "images_per_s", "epoch_time_s", "wall_time_s"]


def write_history(history: list[dict[str, Any]], run_dir: Path) -> None:
    atomic_write_text("".join(json.dumps(row) + "\n" for row in history), run_dir / "metrics.jsonl")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    atomic_write_text(buffer.getvalue(), run_dir / "metrics.csv")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TensorBoard:
    """Optional: silently absent when the tensorboard package is not installed."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in COLUMNS[2:]:
            value = row.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
