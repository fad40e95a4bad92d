"""Fast inference: fold each BN into the conv before it, channels_last, no autograd.

In eval mode BN is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
so ``BN(conv(x))`` is one conv with scaled weights and a bias. Folding removes every BN pass (about
a fifth of ResNet-20's CPU inference time, see docs/performance.md) and changes outputs only by
float rounding (tested to 1e-5).

Only the pairs each module declares in ``CONV_BN_PAIRS`` are merged: a BN that reads a conv's output,
and the only reader of it. In a pre-activation network (He et al. 2016) BN comes before its conv, after
the sum of a shortcut and a branch, so its first BN in each block and the head's BN stay as they are:
a BN followed by ReLU cannot be merged into the conv after it.

``precision="bfloat16"`` also casts the folded weights to bfloat16. On CPUs with bf16 dot-product
instructions (AVX512_BF16, AMX) and on GPUs that roughly doubles throughput; outputs then differ from
float32 by bf16 rounding (about 3 significant digits), so it is opt-in and its accuracy is measured
(docs/performance.md), not assumed.
"""

from __future__ import annotations

import copy
import math
import shutil

import torch
from torch import nn

from .errors import ReslabError


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, device=conv.weight.device)
    folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every conv->BN pair its modules declare merged into one conv."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for conv_name, bn_name in getattr(module, "CONV_BN_PAIRS", ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fold_conv_bn(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def bfloat16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether this device has native bf16 arithmetic (else bf16 is emulated and slower than float32)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def slow_bfloat16_warning(device: str | torch.device = "cpu") -> str | None:
    """The one warning for bf16 asked for where it is emulated, or None where it is native. Without
    AVX512_BF16 or AMX, oneDNN emulates bf16: a ResNet-20 training step took 10x as long as in float32
    on a 2-core AVX2 EPYC (5.9 s against 0.58 s, batch 128); results are still correct."""
    if bfloat16_is_fast(device):
        return None
    return ("warning: this CPU has no native bf16 arithmetic (AVX512_BF16 or AMX), so bf16 runs several "
            "times slower than float32 here")


class RunInDtype(nn.Module):
    """Runs ``net`` in its own dtype on float32 inputs and returns float32 outputs."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dtype)).float()


def optimize_for_inference(model: nn.Module, precision: str = "float32") -> nn.Module:
    """BN folded, channels_last weights, eval mode; optionally bfloat16. Takes and returns float32
    tensors whatever the precision (run it under ``torch.inference_mode()`` for speed)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    if precision == "float32":
        return folded
    return RunInDtype(folded.to(PRECISIONS[precision]), PRECISIONS[precision]).eval()


TTA_MODES = ("none", "flip")


class FlipAveraged(nn.Module):
    """Test-time augmentation: each image and its mirror image, their class probabilities averaged.

    Returns log-probabilities, so softmax, top-k and cross-entropy downstream read them as logits.
    Only the horizontal flip: it is the one training augmentation that leaves the centre crop whole.
    Costs a forward pass of twice the batch. Sound only for models trained on mirrored images
    (``predict.check_tta``).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One pass over both halves (flip keeps x's memory layout, so both run the same kernels).
        log_probs = self.net(torch.cat([x, x.flip(3)])).float().log_softmax(1)
        both = torch.stack(log_probs.split(len(x)))
        return torch.logsumexp(both, 0) - math.log(2)


def with_test_time_augmentation(model: nn.Module, tta: str = "none") -> nn.Module:
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return FlipAveraged(model).eval() if tta == "flip" else model


def has_cxx_compiler() -> bool:
    """Inductor, torch.compile's CPU backend, builds its kernels with a C++ compiler."""
    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def compiled_for_inference(model: nn.Module) -> nn.Module:
    """``model`` (eval mode, e.g. from ``optimize_for_inference``) through ``torch.compile``: inductor
    fuses the convolutions with their ReLUs and sums and, with the weights frozen as constants, picks
    oneDNN's layouts once. The first batch of each shape compiles (about 11 s for ResNet-20 on 2 cores;
    a later new shape compiles once more, for any batch size). It pays on long runs: ResNet-20 in
    bfloat16 at batch 256 went from 3,600 to 4,944 images/s on a 2-core AVX512_BF16 CPU
    (docs/performance.md). Call it under ``torch.inference_mode()`` or ``torch.no_grad()``."""
    require_cxx_compiler()
    return torch.compile(model, options={"freezing": True})


def require_cxx_compiler() -> None:
    if not has_cxx_compiler():
        raise ReslabError("--compile needs a C++ compiler (torch.compile builds its CPU kernels with one): "
                          "install g++, or leave --compile out")


def frozen_for_inference(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript traced, frozen and passed through ``torch.jit.optimize_for_inference`` (which fuses
    conv+BN(+ReLU) and picks oneDNN layouts on CPU). Measured 2.8x the usual eval-mode forward for
    ResNet-20 at batch 256 here (docs/performance.md). Works for any batch size and input size."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, example[:1], check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
