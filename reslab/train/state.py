"""Where a run is: the typed record every checkpoint carries, and the running sums of the epoch.

``RunState`` is saved as a plain mapping (``to_dict``) so that checkpoints stay readable without
this class; ``from_dict`` reads the mapping back, from any reslab version that wrote one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CheckpointError


@dataclass
class RunState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # next batch index within the epoch
    warming_up: bool = False  # the paper's ResNet-110 warm-up (Sec. 4.2) is still on
    best_error: float | None = None
    wall_time_s: float = 0.0
    # The epoch's sums so far, kept when a run stops mid-epoch (global over processes).
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row of metrics per finished epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "checkpoint") -> "RunState":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointError(f"{where}: unknown progress field(s) {', '.join(unknown)}")
        return cls(**values)

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.loss_sum, self.correct, self.seen, self.train_time_s = 0.0, 0, 0, 0.0


class EpochSums:
    """The epoch's loss and accuracy sums, on the training device: adding to them never waits for it."""

    def __init__(self, state: RunState, device: torch.device, count_saved: bool = True):
        # Saved sums are global over processes: under DDP only rank 0 starts from them (count_saved).
        self.loss = torch.tensor(state.loss_sum if count_saved else 0.0, dtype=torch.float64, device=device)
        self.correct = torch.tensor(state.correct if count_saved else 0, dtype=torch.int64, device=device)
        self.seen = torch.tensor(state.seen if count_saved else 0, dtype=torch.int64, device=device)

    def tensors(self) -> list[torch.Tensor]:
        """For an all-reduce across processes."""
        return [self.loss, self.correct, self.seen]

    def keep_in(self, state: RunState) -> None:
        state.loss_sum, state.correct, state.seen = float(self.loss), int(self.correct), int(self.seen)

    @property
    def mean_loss(self) -> float:
        return float(self.loss) / max(1, int(self.seen))

    @property
    def error(self) -> float:
        return 1.0 - int(self.correct) / max(1, int(self.seen))
