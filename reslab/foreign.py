"""Weights trained by other code, as reslab uses them: read from a file, fitted to a named network, and
made into a reslab checkpoint (``reslab import``) or the start of a run (``reslab train --init-from``).

A file in torchvision's layout or the common CIFAR layout (reslab/models/convert.py), or a bare
``state_dict()`` of a reslab model, holds weights only. The network comes from a model name; the class
names from a list, a dataset, or ``class_0, class_1, ...``; the normalisation from the user, or from the
layout's own convention where it has one: every torchvision classifier was trained on inputs normalised
with ImageNet's mean and std, while the CIFAR code bases differ (reslab/data/augment.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    Checkpoint,
    checkpoint_from_payload,
    is_checkpoint_payload,
    read_torch_file,
    resolve_checkpoint_path,
)
from .data.augment import Normalizer
from .errors import CheckpointError
from .fileio import sha256
from .models.convert import convert_state_dict, load_foreign_weights, unwrap_state_dict
from .models.registry import resolve_spec
from .models.resnet import NetSpec, ResNet

# The classifier's name in each layout, and the normalisation that layout's weights were trained with
# (None: the layout does not say).
LAYOUTS: dict[str, tuple[str, str | None]] = {
    "torchvision": ("fc", "imagenet"),
    "cifar": ("linear", None),
    "reslab state_dict": ("head.fc", None),
}


@dataclass(frozen=True)
class ForeignWeights:
    """A weights file saved by other code, its keys already in reslab's names."""

    path: Path
    layout: str  # a key of LAYOUTS
    state: dict[str, torch.Tensor]

    @property
    def num_classes(self) -> int:
        return int(self.state["head.fc.weight"].shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.state["stem.conv.weight"].shape[1])

    @property
    def normalization(self) -> str | None:
        """The published statistics the layout's weights were trained with, if the layout says."""
        return LAYOUTS[self.layout][1]

    def implied_options(self, model: str, options: dict[str, Any]) -> dict[str, Any]:
        """Model options the layout implies unless ``options`` say otherwise: torchvision's bottlenecks
        stride on their 3x3 conv ("v1.5"), the paper's on the 1x1 that reslab builds by default."""
        if self.layout != "torchvision" or "bottleneck_stride" in options:
            return {}
        spec = resolve_spec(model, **options)
        return {"bottleneck_stride": "3x3"} if any(b.kind == "bottleneck" for b in spec.blocks) else {}

    def network(self, model: str, options: dict[str, Any]) -> NetSpec:
        """The named network, shaped as the file's (its class count and input channels)."""
        options = {**self.implied_options(model, options), **options,
                   "num_classes": self.num_classes, "in_channels": self.in_channels}
        return resolve_spec(model, **options)

    def load(self, spec: NetSpec) -> ResNet:
        """A model of ``spec`` holding these weights, or one line saying why they do not fit it."""
        model = ResNet(spec)
        try:
            load_foreign_weights(model, self.state)
        except CheckpointError as exc:
            projections = spec.shortcut == "A" and any(".shortcut.conv." in k for k in self.state)
            hint = "; the file has projection shortcuts: --shortcut B" if projections else ""
            raise CheckpointError(f"{self.path} ({self.layout} layout) does not fit {spec.name}: {exc}{hint}") from None
        return model.eval()


def read_weights(path: str | Path) -> Checkpoint | ForeignWeights:
    """A reslab checkpoint (or run folder), or the weights in a file saved by other code."""
    path = resolve_checkpoint_path(path)
    payload = read_torch_file(path)
    if is_checkpoint_payload(payload):
        return checkpoint_from_payload(payload, path)
    try:
        raw = unwrap_state_dict(payload)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: neither a reslab checkpoint nor ResNet weights ({exc})") from None
    layout = next((layout for layout, (head, _) in LAYOUTS.items() if f"{head}.weight" in raw), None)
    state = convert_state_dict(raw)
    if layout is None or "stem.conv.weight" not in state:
        raise CheckpointError(f"{path}: neither a reslab checkpoint nor ResNet weights in a known layout "
                              "(torchvision: conv1, bn1, layer1.0..., fc; CIFAR: conv1, bn1, layer1.0..., linear)")
    return ForeignWeights(path, layout, state)


def class_names(given: str | None, count: int, data_classes: list[str] | None = None) -> list[str]:
    """Names for a classifier of ``count`` outputs: from a file (one name a line), a number (which must
    be ``count``), a dataset's classes, or else ``class_0, class_1, ...``."""
    if given is not None and Path(given).is_file():
        try:
            names = [line.strip() for line in Path(given).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"--classes {given}: cannot read ({exc})") from None
        if len(names) != count:
            raise CheckpointError(f"--classes {given}: {len(names)} names, but the weights have {count} classes")
        return names
    if given is not None:
        if not given.isdigit():
            raise CheckpointError(f"--classes {given}: no such file (give a file of names, one a line, or a count)")
        if int(given) != count:
            raise CheckpointError(f"--classes {given}: the weights have {count} classes")
    if data_classes is not None:
        if len(data_classes) != count:
            raise CheckpointError(f"the weights have {count} classes, the dataset {len(data_classes)}")
        return list(data_classes)
    return [f"class_{i}" for i in range(count)]


def import_checkpoint(weights: ForeignWeights, model: str, options: dict[str, Any], classes: list[str],
                      normalizer: Normalizer, input_size: int, config: dict[str, Any] | None = None) -> Checkpoint:
    """The weights as a reslab checkpoint: the network, its class names, normalisation and input size, and
    where the weights came from (``progress``), so that eval, predict, export and deepen take it. ``config``:
    the dataset the classes are of (``data``, ``data_root``, ``image_size``), for eval's default."""
    spec = weights.network(model, options)
    loaded = weights.load(spec)
    return Checkpoint(spec=spec, classes=classes, normalizer=normalizer, input_size=input_size,
                      model_state=loaded.state_dict(), config=dict(config or {}),
                      progress={"imported_from": str(weights.path.resolve()), "sha256": sha256(weights.path),
                                "layout": weights.layout})
