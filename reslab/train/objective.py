"""What training minimises, chosen once when a run starts: an objective is called as
``objective(logits, batch)`` and returns the batch's mean loss. ``CrossEntropy`` learns from the labels;
``reslab.train.distill.Distillation`` also from a teacher. The training step knows no other.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..data.loader import Batch


class Objective(Protocol):
    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor: ...


class CrossEntropy:
    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.labels, label_smoothing=self.label_smoothing)
