"""Bring weights trained elsewhere: torchvision's ImageNet layout and the common CIFAR layout.

torchvision:  conv1, bn1, layer{1..4}.{i}.{conv,bn}{1,2,3}, layer*.0.downsample.{0,1}, fc
CIFAR (the layout of the popular PyTorch reimplementations):
              conv1, bn1, layer{1..3}.{i}.{conv,bn}{1,2}, layer*.0.shortcut.{0,1} (option B), linear
Files may nest the weights under ``state_dict`` (or ``model``) and prefix keys with ``module.``
(DataParallel/DDP).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

_STEM = {"conv1.": "stem.conv.", "bn1.": "stem.bn."}
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded file, without ``module.`` prefixes."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if key in obj:
                obj = obj[key]
                break
        else:
            raise CheckpointError("no state dict found (looked for keys state_dict, model, net)")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict, found {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _rename(key: str, head: str) -> str:
    for old, new in _STEM.items():
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith(head + "."):
        return "head.fc." + key[len(head) + 1:]
    match = _BLOCK.match(key)
    if match:
        stage, index, rest = match.groups()
        rest = re.sub(r"^(downsample|shortcut)\.0\.", "shortcut.conv.", rest)
        rest = re.sub(r"^(downsample|shortcut)\.1\.", "shortcut.bn.", rest)
        return f"stages.{int(stage) - 1}.blocks.{index}.{rest}"
    return key


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision- or CIFAR-layout keys to reslab's (``stem``, ``stages.S.blocks.I``, ``head.fc``)."""
    state_dict = unwrap_state_dict(state_dict)
    head = "linear" if any(k.startswith("linear.") for k in state_dict) else "fc"
    return {_rename(k, head): v for k, v in state_dict.items()}


def _fill_batch_counters(converted: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> None:
    """PyTorch before 0.4.1 had no ``num_batches_tracked`` BN buffer, so the released weights of the
    popular CIFAR reimplementations lack it. It only counts training steps (and is used only when BN
    momentum is None), so a file missing just these counters starts them at zero."""
    for key, value in own.items():
        if key.endswith(".num_batches_tracked") and key not in converted:
            converted[key] = torch.zeros_like(value)


def load_foreign_weights(model: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
    """Load weights saved in torchvision's or the common CIFAR layout into a reslab model.

    Every tensor must find its place and every parameter and BN statistic must be filled (only BN's
    ``num_batches_tracked`` counters may be absent, as in files saved before PyTorch 0.4.1); otherwise a
    ``CheckpointError`` names what did not match (a wrong depth, shortcut option or class count).
    torchvision's bottlenecks stride on the 3x3 conv: build the model with ``bottleneck_stride="3x3"``.
    Both layouts are of the 2015 (post-activation) networks, so a pre-activation model is refused.
    """
    spec = getattr(model, "spec", None)
    if getattr(spec, "preact", False):
        raise CheckpointError("torchvision's and the common CIFAR layouts hold post-activation ResNets; "
                              f"{spec.name} is a pre-activation network (build it with preact=False)")
    converted = convert_state_dict(state_dict)
    own = model.state_dict()
    _fill_batch_counters(converted, own)
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError("weights do not fit this model: " + ", ".join(parts))
    for key, value in converted.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"weights do not fit this model: {key} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(converted)
    return model
