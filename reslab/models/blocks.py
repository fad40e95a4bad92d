"""Residual blocks (paper Fig. 2 and Fig. 5) and their plain twins.

A block with ``shortcut=None`` is the plain counterpart: the same layers, nothing added.
Convolutions carry no bias because BN follows each one (paper Sec. 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecError
from .shortcuts import make_shortcut

BLOCK_KINDS = ("basic", "bottleneck")
BOTTLENECK_EXPANSION = 4
STRIDE_POSITIONS = ("1x1", "3x3")  # paper: stride on the first 1x1; torchvision "v1.5": on the 3x3


@dataclass(frozen=True)
class BlockSpec:
    """Everything needed to build one block, with widths already resolved.

    ``out_channels`` is the block's output width; for a bottleneck the inner 3x3 width is
    ``out_channels // 4`` (paper Table 1).
    """

    kind: str
    in_channels: int
    out_channels: int
    stride: int = 1
    kernel: tuple[int, int] = (3, 3)

    def __post_init__(self) -> None:
        # The one check of a block's kind: the builder, spec files and NetSpec.from_dict all make BlockSpecs.
        if self.kind not in BLOCK_KINDS:
            raise SpecError(f"unknown block kind {self.kind!r}; choose one of {', '.join(BLOCK_KINDS)}")


def _conv(in_ch: int, out_ch: int, kernel: tuple[int, int], stride: int = 1) -> nn.Conv2d:
    if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
        raise SpecError(f"filter sizes must be odd so that 'same' padding exists, got {kernel}")
    padding = (kernel[0] // 2, kernel[1] // 2)
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)


def _shortcut_for(spec: BlockSpec, option: str | None) -> nn.Module | None:
    """The block's shortcut under ``option``; ``None`` (no shortcut at all) for the plain twin."""
    return None if option is None else make_shortcut(option, spec.in_channels, spec.out_channels, spec.stride)


class BasicBlock(nn.Module):
    """Two-layer block: conv k, BN, ReLU, conv k, BN, (+ shortcut), ReLU."""

    def __init__(self, spec: BlockSpec, shortcut: str | None):
        super().__init__()
        self.conv1 = _conv(spec.in_channels, spec.out_channels, spec.kernel, spec.stride)
        self.bn1 = nn.BatchNorm2d(spec.out_channels)
        self.conv2 = _conv(spec.out_channels, spec.out_channels, spec.kernel)
        self.bn2 = nn.BatchNorm2d(spec.out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut_for(spec, shortcut)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            # The second ReLU comes after the addition (paper Eq. 1 and Fig. 2).
            out = out + self.shortcut(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """Three-layer block: 1x1 reduce, BN, ReLU, k x k, BN, ReLU, 1x1 expand, BN, (+ shortcut), ReLU."""

    def __init__(self, spec: BlockSpec, shortcut: str | None, stride_on: str = "1x1"):
        super().__init__()
        if spec.out_channels % BOTTLENECK_EXPANSION:
            raise SpecError(
                f"a bottleneck's output width must be a multiple of {BOTTLENECK_EXPANSION}, got {spec.out_channels}"
            )
        inner = spec.out_channels // BOTTLENECK_EXPANSION
        stride_1x1, stride_3x3 = (spec.stride, 1) if stride_on == "1x1" else (1, spec.stride)
        self.conv1 = nn.Conv2d(spec.in_channels, inner, 1, stride=stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = _conv(inner, inner, spec.kernel, stride_3x3)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, spec.out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(spec.out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut_for(spec, shortcut)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


def make_block(spec: BlockSpec, shortcut: str | None, bottleneck_stride: str = "1x1") -> nn.Module:
    """Build one block; ``shortcut=None`` gives the plain twin (kind, shortcut option and stride position
    were checked when the specs were made)."""
    if spec.kind == "basic":
        return BasicBlock(spec, shortcut)
    return Bottleneck(spec, shortcut, bottleneck_stride)
