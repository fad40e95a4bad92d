"""Residual blocks (paper Fig. 2 and Fig. 5), their pre-activation forms (He et al. 2016, "Identity
Mappings in Deep Residual Networks") and their plain twins.

A block with ``shortcut=None`` is the plain counterpart: the same layers, nothing added.
Convolutions carry no bias because BN follows each one (paper Sec. 3.4), or, in a pre-activation
block, because the next BN removes any constant added to the sum.

Each block names its ``CONV_BN_PAIRS``: the (conv, BN) attributes where the BN reads that conv's
output and nothing else reads it, the only pairs ``inference.fold_batchnorm`` may merge (in a
pre-activation block BN comes *before* its conv, so ``conv1``/``bn1`` is not such a pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecError
from .shortcuts import ProjectionShortcut, make_shortcut

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


def _shortcut_for(spec: BlockSpec, option: str | None, batchnorm: bool = True) -> nn.Module | None:
    """The block's shortcut under ``option``; ``None`` (no shortcut at all) for the plain twin."""
    if option is None:
        return None
    return make_shortcut(option, spec.in_channels, spec.out_channels, spec.stride, batchnorm)


def _inner_width(spec: BlockSpec) -> int:
    if spec.out_channels % BOTTLENECK_EXPANSION:
        raise SpecError(
            f"a bottleneck's output width must be a multiple of {BOTTLENECK_EXPANSION}, got {spec.out_channels}"
        )
    return spec.out_channels // BOTTLENECK_EXPANSION


class BasicBlock(nn.Module):
    """Two-layer block: conv k, BN, ReLU, conv k, BN, (+ shortcut), ReLU."""

    CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))

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

    def zero_init_last(self) -> None:
        """The branch outputs exactly 0, so the block is ReLU(shortcut(x))."""
        nn.init.zeros_(self.last_bn.weight)
        nn.init.zeros_(self.last_bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            # The second ReLU comes after the addition (paper Eq. 1 and Fig. 2).
            out = out + self.shortcut(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """Three-layer block: 1x1 reduce, BN, ReLU, k x k, BN, ReLU, 1x1 expand, BN, (+ shortcut), ReLU."""

    CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, spec: BlockSpec, shortcut: str | None, stride_on: str = "1x1"):
        super().__init__()
        inner = _inner_width(spec)
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

    def zero_init_last(self) -> None:
        """The branch outputs exactly 0, so the block is ReLU(shortcut(x))."""
        nn.init.zeros_(self.last_bn.weight)
        nn.init.zeros_(self.last_bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class _PreactBlock(nn.Module):
    """What both pre-activation blocks share (He et al. 2016, "full pre-activation"): BN-ReLU opens the
    branch and nothing follows the addition, ``x_{l+1} = x_l + F(x_l)``.

    Which input each shortcut reads:
    - identity and option A (zero-pad) read ``x`` itself, so that from any block to any later one the
      signal is ``x_l`` plus a sum of branch outputs (2016 paper, Eq. 4), nothing in between;
    - a projection (B where shapes change, C everywhere) reads the branch's pre-activated input
      ``ReLU(BN(x))``, as the authors' released ResNet-1001 code does for its dimension-raising units
      (the 2016 paper also takes the first unit's activation before the split). A projection is a weight
      layer, and every weight layer of a pre-activation network reads a normalised input; ``x`` itself
      is an un-normalised running sum whose scale grows with depth. The shortcut is no longer an
      identity there either way.
    """

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(spec.in_channels)
        self.relu = nn.ReLU(inplace=True)

    def _set_shortcut(self, spec: BlockSpec, option: str | None) -> None:
        # Registered after the branch's layers, so that modules() lists them in forward order.
        self.shortcut = _shortcut_for(spec, option, batchnorm=False)
        self.shortcut_reads_activated = isinstance(self.shortcut, ProjectionShortcut)

    def zero_init_last(self) -> None:
        """Zero the last conv, so the block adds exactly 0 (in train and eval mode): the identity. Not
        the last BN's scale: it comes before a ReLU, which would then pass no gradient to anything in
        the branch, and the block would stay zero for good."""
        nn.init.zeros_(self.last_conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        out = self.branch(activated)
        if self.shortcut is None:
            return out
        return out + self.shortcut(activated if self.shortcut_reads_activated else x)


class PreactBasicBlock(_PreactBlock):
    """Pre-activation two-layer block: BN, ReLU, conv k, BN, ReLU, conv k, + shortcut."""

    CONV_BN_PAIRS = (("conv1", "bn2"),)

    def __init__(self, spec: BlockSpec, shortcut: str | None):
        super().__init__(spec)
        self.conv1 = _conv(spec.in_channels, spec.out_channels, spec.kernel, spec.stride)
        self.bn2 = nn.BatchNorm2d(spec.out_channels)
        self.conv2 = _conv(spec.out_channels, spec.out_channels, spec.kernel)
        self._set_shortcut(spec, shortcut)

    @property
    def last_conv(self) -> nn.Conv2d:
        return self.conv2

    def branch(self, activated: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn2(self.conv1(activated))))


class PreactBottleneck(_PreactBlock):
    """Pre-activation three-layer block: BN, ReLU, 1x1 reduce, BN, ReLU, k x k, BN, ReLU, 1x1 expand,
    + shortcut."""

    CONV_BN_PAIRS = (("conv1", "bn2"), ("conv2", "bn3"))

    def __init__(self, spec: BlockSpec, shortcut: str | None, stride_on: str = "1x1"):
        inner = _inner_width(spec)
        super().__init__(spec)
        stride_1x1, stride_3x3 = (spec.stride, 1) if stride_on == "1x1" else (1, spec.stride)
        self.conv1 = nn.Conv2d(spec.in_channels, inner, 1, stride=stride_1x1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = _conv(inner, inner, spec.kernel, stride_3x3)
        self.bn3 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, spec.out_channels, 1, bias=False)
        self._set_shortcut(spec, shortcut)

    @property
    def last_conv(self) -> nn.Conv2d:
        return self.conv3

    def branch(self, activated: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn2(self.conv1(activated)))
        out = self.relu(self.bn3(self.conv2(out)))
        return self.conv3(out)


def make_block(spec: BlockSpec, shortcut: str | None, bottleneck_stride: str = "1x1",
               preact: bool = False) -> nn.Module:
    """Build one block; ``shortcut=None`` gives the plain twin, ``preact`` the pre-activation form (kind,
    shortcut option and stride position were checked when the specs were made)."""
    if spec.kind == "basic":
        return PreactBasicBlock(spec, shortcut) if preact else BasicBlock(spec, shortcut)
    if preact:
        return PreactBottleneck(spec, shortcut, bottleneck_stride)
    return Bottleneck(spec, shortcut, bottleneck_stride)
