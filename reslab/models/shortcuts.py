"""The shortcut connections of paper Sec. 3.3 (options A, B and C).

Every block has a shortcut module; for "plain" networks it is ``None`` and the block adds nothing.

- A: identity where shapes agree; where they differ, subsample spatially by the stride and pad the
  new channels with zeros, split evenly before and after the existing ones. Parameter-free.
- B: identity where shapes agree, a projection (1x1 conv with stride + BN) where they differ.
- C: a projection on every shortcut.

Pre-activation blocks (He et al. 2016) use the same options with a bare 1x1 convolution as the
projection: there the sum feeds the next block's BN (or the head's), so a BN of its own would only rescale
one of the two terms. The block decides what each shortcut reads (see ``blocks._PreactBlock``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError

SHORTCUT_OPTIONS = ("A", "B", "C")


class ZeroPadShortcut(nn.Module):
    """Option A where shapes change: ``x[:, :, ::s, ::s]`` plus zero channels around it.

    Subsampling by slicing matches the output size of a stride-s conv with "same" padding
    (ceil(H / s)), so the two branches always agree in shape.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise SpecError(
                f"shortcut option A cannot shrink channels ({in_channels} -> {out_channels}); use B or C"
            )
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_before = extra // 2
        self.pad_after = extra - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_before or self.pad_after:
            n, _, h, w = x.shape
            x = torch.cat(
                [x.new_zeros(n, self.pad_before, h, w), x, x.new_zeros(n, self.pad_after, h, w)], dim=1
            )
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class ProjectionShortcut(nn.Module):
    """Options B/C: ``W_s x`` of paper Eq. 2, a 1x1 convolution (with the block's stride) and BN
    (no BN with ``batchnorm=False``, for pre-activation blocks)."""

    # What inference.fold_batchnorm may merge: the BN reads this conv's output and nothing else does.
    CONV_BN_PAIRS = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int, stride: int, batchnorm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_channels) if batchnorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out if self.bn is None else self.bn(out)


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int,
                  batchnorm: bool = True) -> nn.Module:
    """The shortcut of one residual block under ``option`` ("A", "B" or "C", checked by NetSpec);
    ``batchnorm`` says whether a projection ends with BN."""
    shapes_agree = in_channels == out_channels and stride == 1
    if option == "C" or (option == "B" and not shapes_agree):
        return ProjectionShortcut(in_channels, out_channels, stride, batchnorm)
    if shapes_agree:
        return nn.Identity()
    return ZeroPadShortcut(in_channels, out_channels, stride)
