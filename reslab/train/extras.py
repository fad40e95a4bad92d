"""The one interface through which optional parts of a run (weight averaging today) join the core.

The trainer calls each part at three points and knows nothing else of it: at the end of every epoch
(after evaluation: the part may add its metrics to the epoch's row), just before ``last.pt`` is
written (the part writes its own files; rank 0 only), and when a checkpoint is built (the fields a
resumed run needs to carry the part on). Distillation is not a part: it changes the loss, and is
an objective (reslab/train/objective.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .setup import TrainingRun


class EpochExtra(Protocol):
    def end_of_epoch(self, run: "TrainingRun", row: dict[str, Any]) -> None: ...

    def write_files(self, run: "TrainingRun") -> None: ...

    def checkpoint_fields(self) -> dict[str, Any]: ...
