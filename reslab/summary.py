"""Per-stage output shapes, parameters and FLOPs (multiply-adds) of a network.

The model is built on PyTorch's ``meta`` device, so even ResNet-1202 or ResNet-152 at 224x224 is
summarised in well under a second: no weights are allocated and no arithmetic runs.
"""

from __future__ import annotations

import functools

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models.registry import resolve_spec
from .models.resnet import NetSpec, ResNet


@dataclass(frozen=True)
class Row:
    name: str
    output_shape: tuple[int, ...]
    params: int
    flops: int  # multiply-adds of convolutions and linear layers, as the paper counts them


@dataclass(frozen=True)
class Summary:
    model: str
    input_shape: tuple[int, ...]
    rows: tuple[Row, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input_shape": list(self.input_shape), "params": self.params,
                "flops": self.flops, "rows": [asdict(r) for r in self.rows]}


def _layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def default_input_size(spec: NetSpec) -> int:
    """224 for ImageNet-shaped networks (7x7/2 stem), 32 otherwise."""
    return 224 if spec.stem.stride > 1 or spec.stem.pool is not None else 32


def _drop_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _drop_batchnorm(child)


@functools.lru_cache(maxsize=None)
def preset_summary(name: str) -> Summary:
    """``summarize(name)`` of a registered preset, once per process (``reslab models`` shows them all, and
    ResNet-1202's and ResNet-152's take seconds)."""
    return summarize(name)


def summarize(model: str | Path | NetSpec, input_size: int | None = None, **overrides: Any) -> Summary:
    spec = resolve_spec(model, **overrides)
    size = input_size or default_input_size(spec)
    with torch.device("meta"):
        net = ResNet(spec).eval()
        x = torch.empty(1, spec.in_channels, size, size)
    parts: list[tuple[str, nn.Module]] = [("stem", net.stem)]
    parts += [(f"stage{i + 1}", stage) for i, stage in enumerate(net.stages)]
    parts += [("head", net.head)]
    params = {name: sum(p.numel() for p in part.parameters()) for name, part in parts}
    # BN changes no shape and counts no FLOPs, and on the meta device it runs a slow Python
    # decomposition (half of ResNet-1202's summary time): leave it out of the shape pass.
    _drop_batchnorm(net)

    flops: dict[str, int] = {name: 0 for name, _ in parts}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for part_name, part in parts:
        def count(module: nn.Module, _inputs: Any, output: torch.Tensor, _part: str = part_name) -> None:
            flops[_part] += _layer_flops(module, output)

        for layer in part.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                handles.append(layer.register_forward_hook(count))

        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor, _part: str = part_name) -> None:
            shapes[_part] = tuple(output.shape[1:])

        handles.append(part.register_forward_hook(record))
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    rows = tuple(
        Row(name, shapes[name], params[name], flops[name]) for name, _ in parts
    )
    return Summary(spec.name, (spec.in_channels, size, size), rows)
