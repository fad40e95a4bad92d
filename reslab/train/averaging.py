"""Stochastic weight averaging (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
Better Generalization"): the plain mean of the weights at the end of every epoch from ``average_from``
on. Batch-norm statistics are not averaged: the running means and variances of the trained network
belong to its own weights, not to their mean, so they are measured again for the averaged weights,
with one pass over an epoch of augmented training batches (the images the running statistics were
taken from), before the average is evaluated or saved.

``WeightAveraging`` is the part a run carries when ``average_from`` is set: at each epoch's end it adds
the weights, measures and evaluates the average (``averaged.pt``), through the trainer's one interface
for optional parts (reslab/train/extras.py).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from . import distributed

if TYPE_CHECKING:
    from .setup import TrainingRun


def first_averaged_epoch(average_from: float, total_epochs: float) -> int:
    """The first epoch (1-based) whose end weights join the average: ``average_from`` below 1 is a
    fraction of the run (0.75: the last quarter), 1 and more an epoch count (10: from the end of epoch 11)."""
    start = average_from * total_epochs if average_from < 1 else average_from
    return max(1, math.floor(start) + 1)


class WeightAverage:
    """A running mean of a model's parameters (not its buffers), kept in float32 on the model's device."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor] | None = None, count: int = 0):
        self.count = count
        if state is None:
            self.mean = {name: p.detach().float().clone() for name, p in model.named_parameters()}
        else:
            self.mean = {name: state[name].to(p.device, torch.float32) for name, p in model.named_parameters()}

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        self.count += 1
        for name, p in model.named_parameters():
            if self.count == 1:
                self.mean[name].copy_(p.detach())
            else:
                self.mean[name].add_(p.detach().float() - self.mean[name], alpha=1.0 / self.count)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().clone() for name, t in self.mean.items()}

    @torch.no_grad()
    def averaged_model(self, template: nn.Module, images: Iterable[torch.Tensor]) -> nn.Module:
        """A copy of ``template`` holding the mean weights, its BN statistics measured on ``images``."""
        model = copy.deepcopy(template)
        for name, p in model.named_parameters():
            p.copy_(self.mean[name])
        recompute_batchnorm(model, images)
        return model.eval()


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Replace every BN layer's running statistics by their mean over ``batches`` of inputs (a cumulative
    average, momentum None, each batch counted once) rather than an exponential one."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


class WeightAveraging:
    """The average as a part of a run: from epoch ``first_epoch`` (1-based) on."""

    def __init__(self, first_epoch: int, average: WeightAverage):
        self.first_epoch = first_epoch
        self.average = average
        self.averaged: nn.Module | None = None  # this epoch's averaged network, until it is saved

    def end_of_epoch(self, run: "TrainingRun", row: dict[str, Any]) -> None:
        self.averaged = None
        if run.state.epoch + 1 < self.first_epoch:
            return
        self.average.add(run.model)
        # BN statistics from the epoch's own augmented batches, as training's running statistics are:
        # measured on unaugmented images instead, they cost the first ResNet-20 average (one epoch, so
        # the live weights) 2.1 points of validation accuracy (14.78% error against 12.66%). Each
        # process measures its share; rank 0's are then given to all.
        batches = (batch.images for batch in run.loader.epoch(run.state.epoch))
        self.averaged = self.average.averaged_model(run.model, batches)
        distributed.broadcast_buffers(self.averaged, run.ctx)
        row["averaged_epochs"] = self.average.count
        if run.eval_loader is not None:
            row.update(run.evaluate(self.averaged, prefix="average_"))

    def write_files(self, run: "TrainingRun") -> None:
        # Called before last.pt is written: a run killed between the two redoes this epoch and writes
        # it again. Its progress is the epoch's, history included: a card can tell which epochs it averages.
        if self.averaged is not None:
            save_checkpoint(run.checkpoint_of(self.averaged), run.run_dir / "averaged.pt")

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"average_state": self.average.state_dict() if self.average.count else None,
                "average_count": self.average.count}
