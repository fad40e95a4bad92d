"""ONNX in and out: export a model with a batch axis of any size, and run ONNX files in ONNX Runtime.

The export goes through ``torch.export`` (the ``dynamo=True`` exporter, which needs ``onnxscript``):
the older TorchScript-based exporter is deprecated since PyTorch 2.9 and, like ``torch.jit.trace``
that it is built on, will be removed. The optional packages (``pip install 'reslab[onnx]'``) are
imported here only, so a missing one is one clear line, not an ImportError from deep inside torch.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .errors import ReslabError

INPUT, OUTPUT = "images", "logits"
OPSET = 18


def require_onnx_export() -> None:
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise ReslabError(f"ONNX export needs the {package} package: pip install 'reslab[onnx]'") from None


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ReslabError("this needs ONNX Runtime: pip install 'reslab[onnx]' (or onnxruntime)") from None
    return onnxruntime


def batch_dimension() -> torch.export.Dim:
    """The batch axis, of any size. Trace with an example batch of 2 or more: ``torch.export``
    specialises an axis whose example size is 0 or 1 to that size."""
    return torch.export.Dim("batch", min=1)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per torchvision operator it cannot register (torchvision is not
    reslab's dependency) and pytree deprecation warnings from inside torch: noise for reslab's users,
    silenced here only."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        logger.setLevel(level)


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (eval mode) as an ONNX file's bytes: input ``images`` (N, C, H, W) with any N, output
    ``logits``. ``example``: a batch of 2 or more images of the size the model takes."""
    require_onnx_export()
    if len(example) < 2:
        raise ValueError("trace with a batch of 2 or more images, else the batch axis is fixed to its size")
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(model.eval(), (example.contiguous(),), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch_dimension()},), opset_version=OPSET, dynamo=True,
                                    verbose=False)
    return program.model_proto.SerializeToString()


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

