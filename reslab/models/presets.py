"""The paper's two families as ``NetSpec`` factories: one table maps depth to stage layout.

Each also builds the pre-activation form of its networks (``preact=True``; He et al. 2016, "Identity
Mappings in Deep Residual Networks"), with that paper's CIFAR bottleneck networks (depth 9n + 2) and
ImageNet ResNet-200.
"""

from __future__ import annotations

from ..errors import SpecError
from .blocks import BOTTLENECK_EXPANSION, BlockSpec
from .resnet import MAX_BLOCKS, NetSpec, PoolSpec, StageSpec, StemSpec

# Paper Sec. 4.2: three stages at 32/16/8 pixels with 16/32/64 filters, n blocks each, depth 6n + 2.
# Bottleneck blocks (the 2016 paper's ResNet-164 and -1001) have these as their 3x3 widths and four times
# them as their outputs (64/128/256), three layers a block: depth 9n + 2.
CIFAR_WIDTHS = (16, 32, 64)
# The 2016 paper's CIFAR networks: ResNet-110 keeps the basic block, 164 and 1001 are bottlenecks.
PREACT_CIFAR_BLOCKS = {110: "basic", 164: "bottleneck", 1001: "bottleneck"}

# Paper Table 1: depth -> (block kind, blocks per stage). Widths 64/128/256/512 (x4 for bottlenecks).
IMAGENET_LAYOUTS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),  # He et al. 2016, Sec. 5 (ImageNet): the pre-activation ResNet-200
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


def family_prefix(residual: bool, preact: bool) -> str:
    """How preset names begin: resnet20, plain20, preact110, preact-plain110."""
    return ("preact" if residual else "preact-plain") if preact else ("resnet" if residual else "plain")


def _blocks_per_stage(depth: object, block: str) -> int:
    layers = {"basic": 2, "bottleneck": 3}[block]  # weighted layers per block; three stages
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 3 * layers + 2 or (depth - 2) % (3 * layers):
        raise SpecError(f"CIFAR ResNets have depth 6n+2 (20, 32, 44, 56, 110, 1202, ...) with basic blocks and 9n+2 "
                        f"(164, 1001, ...) with block='bottleneck'; got depth {depth!r} with {block} blocks")
    return (depth - 2) // (3 * layers)


def cifar_spec(depth: int, *, num_classes: int = 10, in_channels: int = 3, shortcut: str | None = None,
               residual: bool = True, widths: tuple[int, int, int] = CIFAR_WIDTHS,
               bottleneck_stride: str = "1x1", zero_init_residual: bool = False, preact: bool = False,
               block: str | None = None) -> NetSpec:
    """The CIFAR-10 network of paper Sec. 4.2 for any depth 6n + 2, or of bottleneck blocks for 9n + 2.

    ``block``: "basic" or "bottleneck"; by default basic, but for pre-activation networks the 2016
    paper's choice at its depths (bottleneck for 164 and 1001). ``shortcut``: by default A for basic
    blocks (paper Sec. 4.2) and B for bottlenecks, whose first block already widens 16 -> 64 channels
    (the 2016 paper's networks project there: with it, preact164 has the paper's 1.7M parameters).
    """
    default_block = PREACT_CIFAR_BLOCKS.get(depth, "basic") if preact and isinstance(depth, int) else "basic"
    block = default_block if block is None else block
    if block not in ("basic", "bottleneck"):
        raise SpecError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    n = _blocks_per_stage(depth, block)
    if 3 * n > MAX_BLOCKS:
        raise SpecError(f"depth {depth} is too large to build: {3 * n:,} residual blocks (limit {MAX_BLOCKS:,}; "
                        "ResNet-1202 has 600)")
    widths = tuple(widths)
    if len(widths) != 3:
        raise SpecError(f"CIFAR ResNets have 3 stages, so widths needs 3 values, got {widths}")
    expansion = BOTTLENECK_EXPANSION if block == "bottleneck" else 1
    name = f"{family_prefix(residual, preact)}{depth}"
    name += "" if widths == CIFAR_WIDTHS else f"-w{'-'.join(map(str, widths))}"
    name += "" if block == default_block else f"-{block}"
    return NetSpec(
        in_channels=in_channels,
        num_classes=num_classes,
        stem=StemSpec(channels=widths[0], kernel=(3, 3), stride=1),
        stages=_stages(block, (n, n, n), tuple(w * expansion for w in widths), widths[0], first_stride=1),
        shortcut=shortcut or ("B" if block == "bottleneck" else "A"),
        residual=residual,
        preact=preact,
        bottleneck_stride=bottleneck_stride,
        zero_init_residual=zero_init_residual,
        name=name,
    )


def imagenet_spec(depth: int, *, num_classes: int = 1000, in_channels: int = 3, shortcut: str = "B",
                  residual: bool = True, bottleneck_stride: str = "1x1",
                  zero_init_residual: bool = False, preact: bool = False) -> NetSpec:
    """The ImageNet networks of paper Table 1 (and the 2016 paper's ResNet-200): 7x7/2 conv stem,
    3x3/2 max-pool, four stages."""
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
        preact=preact,
        bottleneck_stride=bottleneck_stride,
        zero_init_residual=zero_init_residual,
        name=f"{family_prefix(residual, preact)}{depth}",
    )
