"""Paper Fig. 7: the standard deviation of each 3x3 conv layer's response, after its BN and before
the nonlinearity (before the addition, in a residual block), over an evaluation set.

The std is over every element of the layer's output (images x channels x positions), accumulated in
float64 over batches.

Pre-activation networks (He et al. 2016) measure the same thing where it exists: a 3x3 conv followed by
a BN is read after that BN (before the ReLU that comes next). The last conv of a pre-activation block
has no BN after it: its output is the residual function F(x) itself, added to the shortcut as it is,
so that raw output is its response. (So is a pre-activation stem's, a bare conv.) The BN that opens
each block reads the running sum, not a conv, and is not measured.

Where the response is read after a BN, its size is the BN's own choice: in eval mode the BN maps its
input to roughly zero mean and unit variance per channel, then scales channel c by gamma_c and shifts it
by beta_c, so over all elements the std is close to sqrt(mean(gamma^2) + var(beta)). ``bn_scale``
records that figure beside the measured std. Fig. 7 is therefore a picture of the BN scales training
settled on, and whatever moves them (weight decay on BN parameters above all) moves the figure.
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
    # sqrt(mean(gamma^2) + var(beta)) of the BN read, or None where the response is a conv's own output
    # (and in responses recorded before this field existed).
    bn_scale: float | None = None


def bn_scale(bn: nn.BatchNorm2d) -> float | None:
    """The std of ``bn``'s output over all elements if its input were exactly normalised per channel:
    what its affine parameters alone make of the response. None for a BN without them."""
    if bn.weight is None or bn.bias is None:
        return None
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    return (gamma.square().mean() + beta.var(unbiased=False)).sqrt().item()


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) whose output is each 3x3 conv's response, in forward order: the BN that reads
    the conv (as its module declares in ``CONV_BN_PAIRS``), else the conv itself."""
    layers = []
    for name, module in model.named_modules():
        bn_after = dict(getattr(module, "CONV_BN_PAIRS", ()))
        for attr, child in module.named_children():
            if not (isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3)):
                continue
            bn = getattr(module, bn_after.get(attr, ""), None)
            measured = bn_after[attr] if isinstance(bn, nn.BatchNorm2d) else attr
            layers.append((f"{name}.{measured}" if name else measured, getattr(module, measured)))
    return layers


@torch.no_grad()
def layer_responses(model: nn.Module, batches) -> list[LayerResponse]:
    model = model.eval()
    layers = response_layers(model)
    sums = {name: torch.zeros(3, dtype=torch.float64) for name, _ in layers}  # count, sum, sum of squares
    handles = []
    for name, layer in layers:
        def hook(_m, _inp, out, _name=name):
            o = out.double()
            sums[_name] += torch.stack([torch.tensor(float(o.numel()), dtype=torch.float64), o.sum(), o.square().sum()])
        handles.append(layer.register_forward_hook(hook))
    try:
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, (name, layer) in enumerate(layers, start=1):
        n, s, sq = sums[name].tolist()
        var = max(0.0, sq / n - (s / n) ** 2)
        scale = bn_scale(layer) if isinstance(layer, nn.BatchNorm2d) else None
        out.append(LayerResponse(i, name, var ** 0.5, scale))
    return out
