"""The network: a config (``NetSpec``) that fixes the whole shape, and the module built from it.

``NetSpec`` is the single source of a model's architecture. Presets, the ``Builder`` and YAML/JSON
specs all produce one; checkpoints store it (``to_dict``) so that a model can be rebuilt anywhere.
The module reads like the paper's parts: stem -> stages of blocks -> head (global pool + linear).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import SpecError
from .blocks import STRIDE_POSITIONS, BlockSpec, make_block
from .shortcuts import SHORTCUT_OPTIONS

POOL_KINDS = ("max", "avg")


# Far above the largest network of the paper (ResNet-1202: 600 blocks, 19.4M parameters) and of
# torchvision (ResNet-152: 50 blocks, 60M), yet refused before anything is built: a network past these
# (say repeat: 100000, or depth 10^6) would take minutes and gigabytes before its first error or summary line.
MAX_BLOCKS = 10_000
MAX_PARAMS = 2_000_000_000  # 8 GB of float32 weights


@dataclass(frozen=True)
class PoolSpec:
    kind: str  # "max" | "avg"
    kernel: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class StemSpec:
    """The first conv (+ BN + ReLU, except in pre-activation networks), optionally followed by a pool
    (ImageNet: 7x7/2 then 3x3/2 max)."""

    channels: int
    kernel: tuple[int, int] = (3, 3)
    stride: int = 1
    pool: PoolSpec | None = None


@dataclass(frozen=True)
class StageSpec:
    """Blocks that run at one resolution and width; ``pool`` (if any) runs before the first block."""

    blocks: tuple[BlockSpec, ...]
    pool: PoolSpec | None = None


@dataclass(frozen=True)
class NetSpec:
    in_channels: int
    num_classes: int
    stem: StemSpec
    stages: tuple[StageSpec, ...]
    # "A" | "B" | "C" (paper Sec. 3.3); ignored when residual is False.
    shortcut: str = "A"
    # False gives the plain counterpart: the same layers with no shortcuts (paper Sec. 4.1, 4.2).
    residual: bool = True
    # Pre-activation blocks (He et al. 2016): BN-ReLU before each conv and nothing after the addition, so
    # from any block to any later one the shortcut path is a pure sum, which is what let 1001 layers train.
    # The stem is then a bare conv (the first block opens with BN-ReLU) and the head adds the last BN-ReLU.
    # A field of its own, not a block kind: the same layers and widths, in another order.
    preact: bool = False
    # Where a strided bottleneck puts its stride: "1x1" as in the paper, "3x3" as torchvision ("v1.5").
    bottleneck_stride: str = "1x1"
    # Optional pool between the last stage and the global average pool (the old library's avg_pool).
    head_pool: PoolSpec | None = None
    # Start each residual branch at zero by zeroing its last BN's scale (Goyal et al. 2017); in a
    # pre-activation block, its last conv (see blocks._PreactBlock.zero_init_last).
    zero_init_residual: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUT_OPTIONS:
            raise SpecError(f"unknown shortcut option {self.shortcut!r}; choose one of A, B, C")
        if self.bottleneck_stride not in STRIDE_POSITIONS:
            raise SpecError(f"bottleneck_stride must be one of {STRIDE_POSITIONS}, got {self.bottleneck_stride!r}")
        if not isinstance(self.preact, bool):
            raise SpecError(f"preact must be true or false, got {self.preact!r}")
        for name, value in (("in_channels", self.in_channels), ("num_classes", self.num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{name} must be a positive integer, got {value!r}")

    @property
    def blocks(self) -> list[BlockSpec]:
        return [block for stage in self.stages for block in stage.blocks]

    @property
    def out_channels(self) -> int:
        blocks = self.blocks
        return blocks[-1].out_channels if blocks else self.stem.channels

    @property
    def depth(self) -> int:
        """Weighted layers as the paper counts them: convs on the main path plus the fc layer."""
        per_block = {"basic": 2, "bottleneck": 3}
        return 1 + sum(per_block[b.kind] for b in self.blocks) + 1

    def with_overrides(self, **changes: Any) -> "NetSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetSpec":
        """Inverse of ``to_dict`` (tuples come back from JSON/YAML as lists)."""
        try:
            data = dict(data)
            stem = dict(data.pop("stem"))
            stem["kernel"] = tuple(stem["kernel"])
            stem["pool"] = _pool_from_dict(stem.get("pool"))
            stages = tuple(
                StageSpec(
                    blocks=tuple(
                        BlockSpec(**{**b, "kernel": tuple(b["kernel"])}) for b in stage["blocks"]
                    ),
                    pool=_pool_from_dict(stage.get("pool")),
                )
                for stage in data.pop("stages")
            )
            head_pool = _pool_from_dict(data.pop("head_pool", None))
            return cls(stem=StemSpec(**stem), stages=stages, head_pool=head_pool, **data)
        except (KeyError, TypeError) as exc:
            raise SpecError(f"not a valid network spec: {exc}") from None


def _pool_from_dict(data: dict[str, Any] | None) -> PoolSpec | None:
    return None if data is None else PoolSpec(**data)


def make_pool(spec: PoolSpec) -> nn.Module:
    if spec.kind == "max":
        return nn.MaxPool2d(spec.kernel, spec.stride, spec.padding)
    if spec.kind == "avg":
        return nn.AvgPool2d(spec.kernel, spec.stride, spec.padding)
    raise SpecError(f"unknown pool kind {spec.kind!r}; choose one of {', '.join(POOL_KINDS)}")


class Stem(nn.Module):
    """conv, BN, ReLU, optional pool; with ``activate=False`` (pre-activation networks) conv and pool.

    A pre-activation network's first block opens with BN-ReLU, so its stem stops at the conv. Where a
    max-pool follows (ImageNet), it runs before that BN-ReLU rather than after: max-pooling commutes with
    ReLU and with a BN of positive scale, so in eval mode the order makes no difference then.
    """

    CONV_BN_PAIRS = (("conv", "bn"),)

    def __init__(self, in_channels: int, spec: StemSpec, activate: bool = True):
        super().__init__()
        padding = (spec.kernel[0] // 2, spec.kernel[1] // 2)
        self.conv = nn.Conv2d(in_channels, spec.channels, spec.kernel, spec.stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(spec.channels) if activate else None
        self.relu = nn.ReLU(inplace=True) if activate else None
        self.pool = make_pool(spec.pool) if spec.pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.relu(self.bn(x))
        return self.pool(x)


class Stage(nn.Module):
    def __init__(self, spec: StageSpec, net: NetSpec):
        super().__init__()
        self.pool = make_pool(spec.pool) if spec.pool else nn.Identity()
        shortcut = net.shortcut if net.residual else None
        self.blocks = nn.Sequential(*(make_block(b, shortcut, net.bottleneck_stride, net.preact) for b in spec.blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pool(x))


class Head(nn.Module):
    """Optional pool, global average pool, linear classifier (paper Sec. 3.4 / 4.2). With
    ``activate=True`` (pre-activation networks) BN-ReLU comes first: the last block's sum is otherwise
    never normalised nor activated (He et al. 2016 add this "extra activation" after the last unit)."""

    def __init__(self, in_features: int, num_classes: int, pool: PoolSpec | None, activate: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_features) if activate else None
        self.relu = nn.ReLU(inplace=True) if activate else None
        self.pool = make_pool(pool) if pool else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier reads: (N, C)."""
        if self.bn is not None:
            x = self.relu(self.bn(x))
        return self.pool(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ResNet(nn.Module):
    """Any network a ``NetSpec`` describes: residual or plain, CIFAR- or ImageNet-shaped, or custom."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        self.stem = Stem(spec.in_channels, spec.stem, activate=not spec.preact)
        self.stages = nn.Sequential(*(Stage(s, spec) for s in spec.stages))
        self.head = Head(spec.out_channels, spec.num_classes, spec.head_pool, activate=spec.preact)
        self.backbone_frozen = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (paper Sec. 3.4, ref. [13]); BN starts as identity."""
        if self.stem.conv.weight.is_meta:
            # Built on the meta device (summary.py) there are no values to draw, and drawing them through
            # PyTorch's Python decompositions took over half of ResNet-152's summary time.
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.spec.zero_init_residual and self.spec.residual:
            self.zero_init_last()

    def zero_init_last(self) -> None:
        """Zero each block's last BN (or, pre-activation, its last conv), so every residual block starts
        as the identity (plus its shortcut's change of shape)."""
        for block in self.blocks():
            block.zero_init_last()

    def blocks(self) -> list[nn.Module]:
        return [block for stage in self.stages for block in stage.blocks]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits of the last stage's map; with ``pre_logits`` the pooled features the classifier reads."""
        return self.head.features(x) if pre_logits else self.head(x)

    def freeze_backbone(self) -> None:
        """Train the classifier (``head.fc``) alone, as a linear probe does: every other parameter stops
        taking gradients, and every BN keeps its running statistics (it stays in eval mode whatever
        ``train()`` asks), so the features the classifier reads do not change."""
        self.backbone_frozen = True
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("head.fc."))
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.backbone_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
