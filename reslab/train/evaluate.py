"""Evaluation: loss, top-1/top-5 error, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EvalResult:
    loss_sum: torch.Tensor
    correct1: torch.Tensor
    correct5: torch.Tensor
    count: torch.Tensor
    confusion: torch.Tensor  # (true, predicted) counts

    @property
    def loss(self) -> float:
        return float(self.loss_sum / self.count.clamp_min(1))

    @property
    def error(self) -> float:
        return 1.0 - float(self.correct1) / max(1, int(self.count))

    @property
    def top5_error(self) -> float:
        return 1.0 - float(self.correct5) / max(1, int(self.count))

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp_min(1)
        return (self.confusion.diagonal() / totals).tolist()

    def tensors(self) -> list[torch.Tensor]:
        """The sums, for an all-reduce across processes."""
        return [self.loss_sum, self.correct1, self.correct5, self.count, self.confusion]


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
             autocast: bool = False) -> EvalResult:
    """Sums over every batch; one host sync at the end, when a value is read."""
    was_training = model.training
    model.eval()
    # A model run by another engine (ONNX Runtime, for int8) has no parameters and takes CPU tensors.
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def scored() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(x)
            yield logits, y

    try:
        return tally(scored(), num_classes, device)
    finally:
        model.train(was_training)


@torch.inference_mode()
def tally(scores: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
          device: torch.device | str = "cpu") -> EvalResult:
    """The sums of ``evaluate`` over (logits or log-probabilities, labels) pairs, however they were made
    (reslab/views.py averages several views of each image into one)."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1 = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    k = min(5, num_classes)
    for logits, y in scores:
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top = logits.topk(k, dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        correct5 += (top == y[:, None]).any(1).sum()
        count += y.numel()
        confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes ** 2).view(num_classes, num_classes)
    return EvalResult(loss_sum, correct1, correct5, count, confusion)
