"""Paper Fig. 7: the standard deviation of each 3x3 conv layer's response, after its BN and before
the nonlinearity (before the addition, in a residual block), over an evaluation set.

The std is over every element of the layer's output (images x channels x positions), accumulated in
float64 over batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerResponse:
    index: int  # 1-based, in forward order
    name: str
    std: float


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, BN) for each BN that directly follows a 3x3 conv, in forward order."""
    layers = []
    modules = dict(model.named_modules())
    for name, module in model.named_modules():
        if not isinstance(module, nn.BatchNorm2d):
            continue
        parent, _, attr = name.rpartition(".")
        conv_attr = {"bn": "conv", "bn1": "conv1", "bn2": "conv2", "bn3": "conv3"}.get(attr)
        conv = getattr(modules[parent] if parent else model, conv_attr, None) if conv_attr else None
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            layers.append((name, module))
    return layers


@torch.no_grad()
def layer_responses(model: nn.Module, batches) -> list[LayerResponse]:
    model = model.eval()
    layers = response_layers(model)
    sums = {name: torch.zeros(3, dtype=torch.float64) for name, _ in layers}  # count, sum, sum of squares
    handles = []
    for name, bn in layers:
        def hook(_m, _inp, out, _name=name):
            o = out.double()
            sums[_name] += torch.stack([torch.tensor(float(o.numel()), dtype=torch.float64), o.sum(), o.square().sum()])
        handles.append(bn.register_forward_hook(hook))
    try:
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, (name, _) in enumerate(layers, start=1):
        n, s, sq = sums[name].tolist()
        var = max(0.0, sq / n - (s / n) ** 2)
        out.append(LayerResponse(i, name, var ** 0.5))
    return out
