"""The paper's two families as ``NetSpec`` factories: one table maps depth to stage layout."""

from __future__ import annotations

from ..errors import SpecError
from .blocks import BOTTLENECK_EXPANSION, BlockSpec
from .resnet import MAX_BLOCKS, NetSpec, PoolSpec, StageSpec, StemSpec

# Paper Sec. 4.2: three stages at 32/16/8 pixels with 16/32/64 filters, n blocks each, depth 6n + 2.
CIFAR_WIDTHS = (16, 32, 64)

# Paper Table 1: depth -> (block kind, blocks per stage). Widths 64/128/256/512 (x4 for bottlenecks).
IMAGENET_LAYOUTS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)


def _stages(kind: str, blocks_per_stage: tuple[int, ...], widths: tuple[int, ...], in_width: int,
            first_stride: int) -> tuple[StageSpec, ...]:
    """Stages whose first block changes width and (after stage 1) halves the map, as in Table 1."""
    stages = []
    for index, (count, width) in enumerate(zip(blocks_per_stage, widths)):
        stride = first_stride if index == 0 else 2
        blocks = []
        for i in range(count):
            blocks.append(BlockSpec(kind, in_width, width, stride if i == 0 else 1))
            in_width = width
        stages.append(StageSpec(tuple(blocks)))
    return tuple(stages)


def cifar_spec(depth: int, *, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A",
               residual: bool = True, widths: tuple[int, int, int] = CIFAR_WIDTHS,
               bottleneck_stride: str = "1x1", zero_init_residual: bool = False) -> NetSpec:
    """The CIFAR-10 network of paper Sec. 4.2 for any depth 6n + 2."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise SpecError(f"CIFAR ResNets have depth 6n+2 (20, 32, 44, 56, 110, 1202, ...), got {depth!r}")
    n = (depth - 2) // 6
    if 3 * n > MAX_BLOCKS:
        raise SpecError(f"depth {depth} is too large to build: {3 * n:,} residual blocks (limit {MAX_BLOCKS:,}; "
                        "ResNet-1202 has 600)")
    widths = tuple(widths)
    if len(widths) != 3:
        raise SpecError(f"CIFAR ResNets have 3 stages, so widths needs 3 values, got {widths}")
    prefix = "resnet" if residual else "plain"
    return NetSpec(
        in_channels=in_channels,
        num_classes=num_classes,
        stem=StemSpec(channels=widths[0], kernel=(3, 3), stride=1),
        stages=_stages("basic", (n, n, n), widths, widths[0], first_stride=1),
        shortcut=shortcut,
        residual=residual,
        bottleneck_stride=bottleneck_stride,
        zero_init_residual=zero_init_residual,
        name=f"{prefix}{depth}" if widths == CIFAR_WIDTHS else f"{prefix}{depth}-w{'-'.join(map(str, widths))}",
    )


def imagenet_spec(depth: int, *, num_classes: int = 1000, in_channels: int = 3, shortcut: str = "B",
                  residual: bool = True, bottleneck_stride: str = "1x1",
                  zero_init_residual: bool = False) -> NetSpec:
    """The ImageNet networks of paper Table 1: 7x7/2 conv stem, 3x3/2 max-pool, four stages."""
    if depth not in IMAGENET_LAYOUTS:
        raise SpecError(f"ImageNet ResNets exist for depths {sorted(IMAGENET_LAYOUTS)}, got {depth!r}")
    kind, blocks_per_stage = IMAGENET_LAYOUTS[depth]
    expansion = BOTTLENECK_EXPANSION if kind == "bottleneck" else 1
    widths = tuple(w * expansion for w in IMAGENET_WIDTHS)
    return NetSpec(
        in_channels=in_channels,
        num_classes=num_classes,
        stem=StemSpec(channels=64, kernel=(7, 7), stride=2, pool=PoolSpec("max", 3, 2, 1)),
        stages=_stages(kind, blocks_per_stage, widths, 64, first_stride=1),
        shortcut=shortcut,
        residual=residual,
        bottleneck_stride=bottleneck_stride,
        zero_init_residual=zero_init_residual,
        name=f"{'resnet' if residual else 'plain'}{depth}",
    )
