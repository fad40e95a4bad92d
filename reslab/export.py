"""Export a checkpoint to TorchScript or ONNX and check the file against PyTorch on real inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ReslabError
from .checkpoint import Checkpoint

FORMATS = ("torchscript", "onnx")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float | None  # exported vs PyTorch logits on the check inputs; None if not checked
    checked_with: str | None


def export(checkpoint: Checkpoint, out: Path, fmt: str, check_inputs: torch.Tensor) -> ExportResult:
    """``check_inputs``: normalised (N, C, H, W) float images the outputs are compared on."""
    if fmt not in FORMATS:
        raise ReslabError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model = checkpoint.build_model()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = check_inputs.contiguous()
    with torch.inference_mode():
        reference = model(x)
    if fmt == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.trace(model, x[:1])
        scripted.save(str(out))
        loaded = torch.jit.load(str(out))
        with torch.inference_mode():
            diff = (loaded(x) - reference).abs().max().item()
        return ExportResult(out, fmt, diff, "torch.jit.load")
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise ReslabError("ONNX export needs the onnx package: pip install 'reslab[onnx]'") from None
    torch.onnx.export(model, (x[:1],), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    try:
        import onnxruntime as ort
    except ImportError:
        return ExportResult(out, fmt, None, None)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    diff = (torch.from_numpy(logits) - reference).abs().max().item()
    return ExportResult(out, fmt, diff, f"onnxruntime {ort.__version__}")
