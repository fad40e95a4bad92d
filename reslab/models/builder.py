""""Make your own ResNet": describe a network block by block, get a ``NetSpec`` / module.

Keeps the vocabulary of the TensorFlow library reslab replaces (``init_block``, ``max_pool``,
``residual_block``, ``avg_pool``, ``fc``), including its ``channel=[in, out]`` form, but checks
every call: widths must chain, pools must not shrink maps to nothing, and a warning says when
3x3 convolutions would run on 1x1 maps (where they only see their centre tap).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

from torch import nn

from ..errors import SpecError
from .blocks import BlockSpec
from .resnet import NetSpec, PoolSpec, ResNet, StageSpec, StemSpec


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise SpecError(f"{what} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise SpecError(f"{what} must be one or two positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _odd_filter(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = _pair(value, what)
    if pair[0] % 2 == 0 or pair[1] % 2 == 0:
        raise SpecError(f"{what} must be odd so that 'same' padding exists, got {value!r}")
    return pair


def _square(value: int | Sequence[int], what: str) -> int:
    pair = _pair(value, what)
    if pair[0] != pair[1]:
        raise SpecError(f"{what} must be square, got {value!r}")
    return pair[0]


def _positive(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{what} must be a positive integer, got {value!r}")
    return value


class Builder:
    """Write a network block by block::

        b = Builder(in_channels=3, num_classes=10)
        b.init_block(filter=(7, 7), channels=32, max_pool=False)
        b.max_pool(kernel=2, stride=2)
        b.residual_block(filter=(3, 3), channels=32, repeat=6)
        b.residual_block(filter=(3, 3), channels=64)   # width change: shortcut per ``shortcut``
        b.avg_pool(); b.fc()
        model = b.build()

    ``input_size`` is only used to infer map sizes for the checks and warnings.
    ``shortcut`` defaults to "B" (projection where shapes change), as the old library did.
    ``preact=True`` gives every block the pre-activation order (He et al. 2016): the stem is then its
    conv alone and the classifier is preceded by BN-ReLU.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, shortcut: str = "B",
                 residual: bool = True, preact: bool = False, bottleneck_stride: str = "1x1",
                 zero_init_residual: bool = False, input_size: int = 32, name: str = "custom"):
        self.in_channels = _positive(in_channels, "in_channels")
        self.num_classes = _positive(num_classes, "num_classes")
        self.options = dict(shortcut=shortcut, residual=residual, preact=preact, bottleneck_stride=bottleneck_stride,
                            zero_init_residual=zero_init_residual, name=name)
        self.input_size = _positive(input_size, "input_size")
        self._stem: StemSpec | None = None
        self._stages: list[StageSpec] = []
        self._pending_pool: PoolSpec | None = None
        self._head_pool: PoolSpec | None = None
        self._finished = False
        self._width = in_channels
        self._size = input_size  # current map side, for the checks only
        self._warned_1x1 = False

    # ---- the old library's vocabulary ------------------------------------------------------
    def init_block(self, filter: int | Sequence[int] = (3, 3), channels: int | None = None, *,
                   channel: Sequence[int] | None = None, stride: int = 1, max_pool: bool = False) -> "Builder":
        """The stem: conv + BN + ReLU (pre-activation: the conv alone); ``max_pool=True`` adds the
        ImageNet 3x3/2 max-pool."""
        if self._stem is not None:
            raise SpecError("init_block() can only be called once, first")
        out = self._resolve_channels(channels, channel, "init_block")
        kernel = _odd_filter(filter, "init_block filter")
        stride = _positive(stride, "init_block stride")
        pool = PoolSpec("max", 3, 2, 1) if max_pool else None
        self._stem = StemSpec(channels=out, kernel=kernel, stride=stride, pool=pool)
        self._width = out
        self._size = math.ceil(self._size / stride)
        if pool:
            self._shrink(pool, "init_block max_pool")
        return self

    def max_pool(self, kernel: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None) -> "Builder":
        """A max-pool before the next block; it opens a new stage."""
        return self._pool("max", kernel, stride)

    def avg_pool(self, kernel: int | Sequence[int] | None = None, stride: int | Sequence[int] | None = None) -> "Builder":
        """With no kernel: nothing extra (``fc`` always averages globally). With one: a pool before it."""
        self._require_stem("avg_pool")
        if kernel is None:
            return self
        spec = PoolSpec("avg", _square(kernel, "avg_pool kernel"),
                        _square(stride if stride is not None else kernel, "avg_pool stride"))
        self._shrink(spec, "avg_pool")
        self._head_pool = spec
        return self

    def residual_block(self, filter: int | Sequence[int] = (3, 3), channels: int | None = None, *,
                       channel: Sequence[int] | None = None, stride: int = 1, repeat: int = 1,
                       kind: str = "basic") -> "Builder":
        """``repeat`` blocks of ``kind`` ("basic" or "bottleneck"); only the first may stride or
        change width. A bottleneck's ``channels`` is its output width (inner width = channels / 4)."""
        self._require_stem("residual_block")
        if self._head_pool is not None:
            raise SpecError("residual_block() after avg_pool(kernel=...): the head pool must come last")
        out = self._resolve_channels(channels, channel, "residual_block")
        kernel = _odd_filter(filter, "residual_block filter")
        stride = _positive(stride, "residual_block stride")
        for i in range(_positive(repeat, "repeat")):
            block = BlockSpec(kind, self._width, out, stride if i == 0 else 1, kernel)
            self._add_block(block)
        return self

    def fc(self) -> "Builder":
        """Global average pool + linear classifier; the last call."""
        self._require_stem("fc")
        self._finished = True
        return self

    # ---- results ---------------------------------------------------------------------------
    def spec(self) -> NetSpec:
        if self._stem is None:
            raise SpecError("the network has no stem: call init_block() first")
        if not self._finished:
            raise SpecError("the network has no classifier: call fc() last")
        stages = list(self._stages)
        if self._pending_pool is not None:
            # A pool with no block after it still runs before the head: an empty stage keeps it in place.
            stages.append(StageSpec((), self._pending_pool))
        return NetSpec(in_channels=self.in_channels, num_classes=self.num_classes, stem=self._stem,
                       stages=tuple(stages), head_pool=self._head_pool, **self.options)

    def build(self) -> nn.Module:
        return ResNet(self.spec())

    # ---- helpers ---------------------------------------------------------------------------
    def _require_stem(self, call: str) -> None:
        if self._stem is None:
            raise SpecError(f"{call}() before init_block(): the network needs a stem first")
        if self._finished:
            raise SpecError(f"{call}() after fc(): fc() must be the last call")

    def _resolve_channels(self, channels: int | None, channel: Sequence[int] | None, call: str) -> int:
        if channel is not None:
            if channels is not None:
                raise SpecError(f"{call}: give channels=OUT or channel=[IN, OUT], not both")
            try:
                expected_in, out = (int(c) for c in channel)
            except (TypeError, ValueError):
                raise SpecError(f"{call}: channel must be [in, out], got {channel!r}") from None
            if expected_in != self._width:
                raise SpecError(f"{call}: channel=[{expected_in}, {out}] but the input here has {self._width} channels")
            channels = out
        if channels is None:
            raise SpecError(f"{call}: give the output width, channels=OUT (or channel=[IN, OUT])")
        return _positive(channels, f"{call} channels")

    def _pool(self, kind: str, kernel: int | Sequence[int], stride: int | Sequence[int] | None) -> "Builder":
        self._require_stem(f"{kind}_pool")
        if self._head_pool is not None:
            raise SpecError(f"{kind}_pool() after avg_pool(kernel=...): the head pool must come last")
        if self._pending_pool is not None:
            raise SpecError("two pools in a row; add a residual_block() between them")
        spec = PoolSpec(kind, _square(kernel, f"{kind}_pool kernel"),
                        _square(stride if stride is not None else kernel, f"{kind}_pool stride"))
        self._shrink(spec, f"{kind}_pool")
        self._pending_pool = spec
        return self

    def _shrink(self, pool: PoolSpec, call: str) -> None:
        size = (self._size + 2 * pool.padding - pool.kernel) // pool.stride + 1
        if size < 1:
            raise SpecError(f"{call}: kernel {pool.kernel} does not fit the {self._size}x{self._size} maps here "
                            f"(input_size={self.input_size})")
        self._size = size

    def _add_block(self, block: BlockSpec) -> None:
        opens_stage = (self._pending_pool is not None or not self._stages or block.stride > 1
                       or block.in_channels != block.out_channels)
        if opens_stage:
            self._stages.append(StageSpec((block,), self._pending_pool))
            self._pending_pool = None
        else:
            last = self._stages[-1]
            self._stages[-1] = StageSpec(last.blocks + (block,), last.pool)
        self._width = block.out_channels
        self._size = math.ceil(self._size / block.stride)
        if self._size == 1 and max(block.kernel) > 1 and not self._warned_1x1:
            self._warned_1x1 = True
            warnings.warn(
                f"{block.kernel[0]}x{block.kernel[1]} convolutions run on 1x1 maps from block "
                f"{len(self._all_blocks())} on (input_size={self.input_size}): they only see their centre tap",
                stacklevel=3,
            )

    def _all_blocks(self) -> list[BlockSpec]:
        return [b for s in self._stages for b in s.blocks]
