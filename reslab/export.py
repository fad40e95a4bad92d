"""Export a checkpoint and check the file against PyTorch on real inputs before it is written.

Formats:
- ``pt2`` (default): a ``torch.export`` program (``torch.export.load(path).module()``), batch of any size;
- ``onnx``: float32 ONNX, batch of any size (``onnxio``);
- ``onnx-int8``: the BN-folded model quantized to int8 (``quantize``), batch of any size;
- ``torchscript``: deprecated, as ``torch.jit.trace`` is in PyTorch; kept while it works.

Each file is loaded back and run at batch sizes 1, 7 and 16 (a single image, an odd batch, the
traced one) against the PyTorch model; a float file that disagrees is not written. The file is
written atomically (``fileio``), so a failed export leaves no file behind.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint
from .errors import ReslabError
from .fileio import atomic_write_bytes

FORMATS = ("pt2", "onnx", "onnx-int8", "torchscript")
DEFAULT_FORMAT = "pt2"
SUFFIXES = {"pt2": ".pt2", "onnx": ".onnx", "onnx-int8": ".int8.onnx", "torchscript": ".torchscript.pt"}
CHECK_BATCHES = (1, 7, 16)
# Float exports run the same arithmetic in another order; more than this (relative to the logits'
# size) is a wrong export, not rounding.
FLOAT_TOLERANCE = 1e-3


class ExportCheckError(ReslabError):
    """An exported file whose outputs differ from PyTorch's (it is not written)."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float | None  # exported vs PyTorch logits, largest over the checks; None if not checked
    checked_with: str | None
    checks: list[dict] = field(default_factory=list)  # per batch size: max_abs_diff, top1_agree
    calibration: str | None = None  # onnx-int8: what it was calibrated on


def default_path(checkpoint: Checkpoint, fmt: str) -> Path:
    return checkpoint.path.with_suffix(SUFFIXES[fmt])


def export(checkpoint: Checkpoint, out: Path, fmt: str = DEFAULT_FORMAT, check_inputs: torch.Tensor | None = None,
           calibration: torch.Tensor | None = None, calibration_source: str | None = None) -> ExportResult:
    """``check_inputs``: normalised (N, C, H, W) float images the outputs are compared on (N >= 2; the
    checks use up to 16). ``calibration``: onnx-int8's uint8 calibration images."""
    if fmt not in FORMATS:
        raise ReslabError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if len(check_inputs) < 2:
        raise ValueError("export traces with 2 or more check images (a batch of 1 would fix the batch size)")
    model = checkpoint.build_model()
    x = check_inputs.contiguous()
    sizes = tuple(sorted({n for n in CHECK_BATCHES if n <= len(x)} | {len(x)}))
    if fmt == "pt2":
        data, run, engine = _pt2(model, x)
    elif fmt == "torchscript":
        data, run, engine = _torchscript(model, x)
    else:
        from . import onnxio

        if fmt == "onnx":
            data = onnxio.onnx_bytes(model, x[:2])
        else:
            from .quantize import quantize

            if calibration is None:
                raise ValueError("onnx-int8 needs calibration images")
            data = quantize(checkpoint, calibration)
        try:
            run = onnxio.OnnxRuntimeModel(data)
        except ReslabError:  # no ONNX Runtime: a float file is still written, unchecked
            atomic_write_bytes(data, out)
            return ExportResult(Path(out), fmt, None, None)
        import onnxruntime

        engine = f"onnxruntime {onnxruntime.__version__}"
    checks = check_batches(run, model, x, sizes)
    worst = max(c["max_abs_diff"] for c in checks)
    if fmt != "onnx-int8":
        with torch.inference_mode():
            scale = max(1.0, model(x).abs().max().item())
        if not worst <= FLOAT_TOLERANCE * scale:  # also catches NaN
            raise ExportCheckError(f"the {fmt} export differs from PyTorch by up to {worst:.3g} in its logits "
                                   f"(batch sizes {', '.join(map(str, sizes))}); nothing written")
    atomic_write_bytes(data, out)
    return ExportResult(Path(out), fmt, worst, engine, checks, calibration_source if fmt == "onnx-int8" else None)


def check_batches(run: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module, x: torch.Tensor,
                  sizes: tuple[int, ...]) -> list[dict]:
    """``run`` (an exported model) against ``reference`` (PyTorch) on the first ``n`` images of ``x`` for
    each ``n`` in ``sizes``: the largest absolute logit difference and how many top-1 classes agree."""
    out = []
    with torch.inference_mode():
        for n in sizes:
            want, got = reference(x[:n]), run(x[:n]).float()
            if got.shape != want.shape:
                raise ExportCheckError(f"the export gave outputs of shape {tuple(got.shape)} for a batch of {n}, "
                                       f"PyTorch {tuple(want.shape)}; nothing written")
            out.append({"batch": n, "max_abs_diff": (got - want).abs().max().item(),
                        "top1_agree": int((got.argmax(1) == want.argmax(1)).sum())})
    return out


def _to_bytes(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _pt2(model: nn.Module, x: torch.Tensor):
    from .onnxio import batch_dimension

    with torch.no_grad():
        program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch_dimension()},))
    data = _to_bytes(lambda f: torch.export.save(program, f))
    loaded = torch.export.load(io.BytesIO(data)).module()  # what a user of the file will run
    return data, loaded, "torch.export.load"


def _torchscript(model: nn.Module, x: torch.Tensor):
    with warnings.catch_warnings():
        # torch.jit is deprecated (reslab says so once, in its help and in the CLI's note).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        with torch.no_grad():
            scripted = torch.jit.trace(model, x[:1], check_trace=False)
        data = _to_bytes(lambda f: torch.jit.save(scripted, f))
        loaded = torch.jit.load(io.BytesIO(data))
    return data, loaded, "torch.jit.load"
