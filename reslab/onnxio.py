"""ONNX in and out: export a model with a batch axis of any size, and run ONNX files in ONNX Runtime.

The export uses PyTorch's TorchScript-based exporter (``dynamo=False``). PyTorch 2.13 marks it
deprecated in favour of the ``torch.export``-based one (``dynamo=True``, which also needs
``onnxscript``), but that one took 20-50x as long per export of the same small network on a busy
2-core CPU (20 s against 0.4-0.7 s, after their first calls: 50 s and 12 s), and ``--precision int8``
exports on every run. Both give the same outputs; switch here when the old one is removed. Its
deprecation warnings are silenced around the call only. The optional packages (``pip install
'reslab[onnx]'``) are imported here only, so a missing one is one clear line.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .errors import ReslabError

INPUT, OUTPUT = "images", "logits"
OPSET = 17


def require_onnx_export() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError:
        raise ReslabError("ONNX export needs the onnx package: pip install 'reslab[onnx]'") from None


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ReslabError("this needs ONNX Runtime: pip install 'reslab[onnx]' (or onnxruntime)") from None
    return onnxruntime


def batch_dimension() -> torch.export.Dim:
    """The batch axis of a ``torch.export`` program, of any size. Trace with an example batch of 2 or
    more: ``torch.export`` specialises an axis whose example size is 0 or 1 to that size."""
    return torch.export.Dim("batch", min=1)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own deprecation notices (see the module's docstring), and nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*[Tt]he feature will be removed.*")
        yield


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (eval mode) as an ONNX file's bytes: input ``images`` (N, C, H, W) with any N, output
    ``logits``. ``example``: a batch of images of the size the model takes."""
    require_onnx_export()
    buffer = io.BytesIO()
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(model.eval(), (example.contiguous(),), buffer, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    return buffer.getvalue()


def session(model: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on (constant folding, conv+activation
    fusion, NCHWc layouts) and ``threads`` intra-op threads (default: torch's thread count)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT otherwise warns about initialisers it keeps as inputs
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime session behind a module's face: float32 (N, C, H, W) tensors in, logits out, so
    evaluation, prediction and test-time augmentation run it as they run a PyTorch model. CPU only."""

    def __init__(self, model: bytes | str, threads: int | None = None):
        super().__init__()
        self.session = session(model, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: images})
        return torch.from_numpy(logits)

