"""What a run that starts from trained weights needs beyond a fresh one: the weights (a reslab checkpoint,
or a file saved by other code, fitted to the network ``model`` names), the normalisation they were
trained with, and which parameters learn at which rate.

``finetune: head`` is a linear probe: the classifier alone trains, on features that do not change (the
backbone's parameters take no gradient and its BN layers keep their running statistics,
``ResNet.freeze_backbone``). ``backbone_lr_scale`` gives every other layer a fraction of the rate: each
optimizer group carries its ``lr_scale`` and the loop multiplies the schedule's rate by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..data.arrays import ImageArrays
from ..data.files import ImageFiles
from ..data.augment import PUBLISHED_STATISTICS, Normalizer
from ..errors import ConfigError
from ..foreign import ForeignWeights, read_weights
from ..models.resnet import NetSpec
from .config import TrainConfig


@dataclass(frozen=True)
class StartingWeights:
    """The network and weights a run starts from, as found in the ``init_from`` file."""

    path: Path
    spec: NetSpec  # the file's network, with the file's class count
    state: dict[str, torch.Tensor]
    normalizer: Normalizer | None  # what the weights were trained with, where known
    source: str  # "reslab checkpoint", or the layout of a file saved by other code
    classes: list[str] | None  # a checkpoint's class names (files saved by other code have none)
    # Model options the file's layout implies (torchvision's bottleneck stride): a resumed run's network
    # is checked against the config's with them.
    implied_options: dict[str, Any] = field(default_factory=dict)


def starting_weights(config: TrainConfig) -> StartingWeights:
    found = read_weights(config.init_from)
    if isinstance(found, Checkpoint):
        return StartingWeights(found.path, found.spec, dict(found.model_state), found.normalizer, "reslab checkpoint",
                               found.classes)
    return _foreign_start(found, config)


def _foreign_start(weights: ForeignWeights, config: TrainConfig) -> StartingWeights:
    if not config.model:
        raise ConfigError(f"{weights.path} holds weights saved by other code ({weights.layout} layout), which "
                          "do not say which network they are: name it with --model (e.g. --model resnet50)")
    spec = weights.network(config.model, config.model_options)
    model = weights.load(spec)
    known = weights.normalization
    return StartingWeights(weights.path, spec, model.state_dict(),
                           Normalizer.published(known, spec.in_channels) if known else None,
                           f"{weights.layout} layout", None, weights.implied_options(config.model, config.model_options))


def needs_new_classifier(start: StartingWeights, classes: list[str]) -> bool:
    """Whether the file's classifier cannot serve the data's classes: another count, or (where the file
    names them) other classes; CIFAR-10's ten outputs are no start for ten digits."""
    return start.spec.num_classes != len(classes) or (start.classes is not None and start.classes != classes)


def run_normalizer(config: TrainConfig, data: ImageArrays | ImageFiles, start: StartingWeights | None,
                   measure: Callable[[str], Normalizer]) -> Normalizer:
    """The normalisation ``config.normalize`` names, for ``data``; one line when it cannot apply.
    ``measure(mode)`` fits ``pixel`` or ``channel`` statistics on the training images, wherever they live
    (in memory, or as files: reslab/train/rundata.py)."""
    if config.normalize in PUBLISHED_STATISTICS:
        return Normalizer.published(config.normalize, data.channels)
    if config.normalize != "weights":
        return measure(config.normalize)
    if start is None or start.normalizer is None:
        raise ConfigError(f"{config.init_from}: weights saved by other code do not record how their inputs were "
                          "normalised, and code bases in this layout differ: choose --normalize imagenet, cifar, "
                          "channel or pixel (the last two measured on the training images)")
    if not start.normalizer.fits(data.channels, data.image_size):
        raise ConfigError(f"{start.path}'s normalisation (a per-pixel mean of another image size, or another "
                          f"channel count) does not apply to {data.name}'s {data.channels}-channel {data.image_size}px "
                          "images: choose --normalize channel, pixel, imagenet or cifar")
    return start.normalizer


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: what trains, with its weight decay and ``lr_scale``. Without finetuning
    choices these are the groups reslab has always made (so a run of an earlier version resumes)."""
    classifier = list(model.head.fc.parameters())
    if config.finetune == "head":
        parts = [(classifier, 1.0)]
    elif config.backbone_lr_scale != 1:
        chosen = {id(p) for p in classifier}
        parts = [([p for p in model.parameters() if id(p) not in chosen], config.backbone_lr_scale), (classifier, 1.0)]
    else:
        parts = [(list(model.parameters()), 1.0)]
    groups = []
    for params, scale in parts:
        if config.no_decay_bn_bias:
            # BN scales/shifts and biases are 1-d: decaying them only fights the normalisation.
            groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay,
                        "lr_scale": scale},
                       {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
        else:
            groups.append({"params": params, "weight_decay": config.weight_decay, "lr_scale": scale})
    return [g for g in groups if g["params"]]


def apply_finetune(model: nn.Module, config: TrainConfig) -> None:
    if config.finetune == "head":
        model.freeze_backbone()
