"""The constructed solution of the paper's introduction: a deeper network made of a trained
shallower one plus layers that are identity mappings is, by construction, no worse.

Residual: each inserted block gets its last BN's scale and shift set to zero, so its branch outputs
exactly 0 in train and eval mode alike, and ReLU(0 + x) = x because x, the previous block's output,
has just been through a ReLU. Plain: an inserted block has no shortcut, so its layers themselves
must pass the signal: both convs are identity kernels (centre tap 1 on the diagonal) and BN is the
identity in eval mode (running mean 0, running variance 1 - eps, scale 1, shift 0). In train mode
that BN normalises with batch statistics, so only the residual construction is exact there.

Pre-activation (He et al. 2016): each inserted block gets its last conv zeroed, so its branch adds
exactly 0 and, with nothing after the addition, the block returns x itself, in train and eval mode.
Not its last BN: that BN is followed by a ReLU, which at exactly zero passes no gradient, so the new
block could never learn anything. A plain pre-activation network cannot be deepened exactly: its
blocks open with BN-ReLU on the previous conv's output, which may be negative, and ReLU discards that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import SpecError
from ..models.blocks import BlockSpec
from ..models.presets import family_prefix
from ..models.resnet import NetSpec, ResNet, StageSpec


@dataclass(frozen=True)
class DeepenResult:
    model: ResNet
    spec: NetSpec
    added: dict[int, int]  # stage index (0-based) -> blocks appended


def deepened_spec(spec: NetSpec, add: int, stages: list[int] | None = None) -> tuple[NetSpec, dict[int, int]]:
    """``spec`` with ``add`` blocks appended, round-robin over ``stages`` (0-based; default all).

    A residual net gets more of the stage's own blocks (bottlenecks in a ResNet-50), since zeroing
    the branch's end makes any block the identity. A plain net gets basic blocks whatever its own
    are: the identity must pass through every layer, and a bottleneck's first 1x1 conv narrows the
    signal to a quarter of its width, which no choice of weights undoes."""
    if add < 1:
        raise SpecError(f"--add must be at least 1, got {add}")
    candidates = [i for i, s in enumerate(spec.stages) if s.blocks]
    stages = candidates if stages is None else stages
    for s in stages:
        if s not in candidates:
            raise SpecError(f"stage {s + 1} does not exist or has no blocks (stages 1..{len(spec.stages)})")
    counts = {s: 0 for s in stages}
    for i in range(add):
        counts[stages[i % len(stages)]] += 1
    new_stages = []
    for index, stage in enumerate(spec.stages):
        extra = counts.get(index, 0)
        if extra:
            last = stage.blocks[-1]
            width = last.out_channels
            kind = last.kind if spec.residual else "basic"
            blocks = stage.blocks + tuple(BlockSpec(kind, width, width, 1, last.kernel) for _ in range(extra))
            stage = StageSpec(blocks, stage.pool)
        new_stages.append(stage)
    deeper = replace(spec, stages=tuple(new_stages))
    prefix = family_prefix(spec.residual, spec.preact)
    return replace(deeper, name=f"{prefix}{deeper.depth}-from-{spec.name}"), counts


@torch.no_grad()
def _make_identity_block(block: nn.Module, residual: bool) -> None:
    if residual:
        block.zero_init_last()  # the branch adds exactly 0 (see the module doc)
        return
    for conv, bn in ((block.conv1, block.bn1), (block.conv2, block.bn2)):
        weight = torch.zeros_like(conv.weight)
        kh, kw = conv.kernel_size
        for c in range(conv.out_channels):
            weight[c, c, kh // 2, kw // 2] = 1.0
        conv.weight.copy_(weight)
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)


def deepen(model: ResNet, add: int, stages: list[int] | None = None) -> DeepenResult:
    """A deeper copy of a trained ``model`` whose outputs equal the original's (see module doc)."""
    spec = model.spec
    if spec.residual and spec.shortcut == "C":
        raise SpecError("with option C every shortcut is a projection, so no inserted block is exactly the "
                        "identity; deepen an option A or B model")
    if spec.preact and not spec.residual:
        raise SpecError("a plain pre-activation network cannot be deepened exactly: an inserted block opens with "
                        "BN-ReLU, which drops the negative values its input may hold; deepen a residual one")
    new_spec, counts = deepened_spec(spec, add, stages)
    deeper = ResNet(new_spec)
    missing, unexpected = deeper.load_state_dict(model.state_dict(), strict=False)
    if unexpected:
        raise SpecError(f"internal: unexpected keys when copying weights: {unexpected[:3]}")
    for stage_index, extra in counts.items():
        blocks = deeper.stages[stage_index].blocks
        for block in list(blocks)[len(blocks) - extra:]:
            _make_identity_block(block, spec.residual)
    return DeepenResult(deeper.train(model.training), new_spec, counts)


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, batches, train_mode: bool) -> float:
    """Largest |logit difference| between two models over ``batches``, in train or eval mode
    (train mode: BN uses batch statistics; running statistics are restored afterwards)."""
    import copy

    a, b = copy.deepcopy(a).train(train_mode), copy.deepcopy(b).train(train_mode)
    worst = 0.0
    for x, _ in batches:
        worst = max(worst, (a(x) - b(x)).abs().max().item())
    return worst
