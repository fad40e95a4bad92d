"""int8 inference: static post-training quantization of the BN-folded model by ONNX Runtime's quantizer.

The model is folded (``inference.fold_batchnorm``), exported to ONNX with a batch axis of any size,
and run on calibration images (by default 256 seeded images of the split it was trained on) to fix
each activation's range; ``onnxruntime.quantization.quantize_static`` then writes a QDQ graph that
ONNX Runtime executes with int8 kernels. Choices, each measured (docs/performance.md):

- weights int8, per output channel (one scale per filter: BN folding leaves filters of very
  different sizes, and one scale per tensor cost accuracy), activations uint8 with a zero point
  (they follow ReLUs, so nearly all are >= 0);
- weights in 7 bits (``reduce_range``): x86 CPUs without VNNI multiply uint8 by int8 with
  ``vpmaddubsw``, which saturates the sum of two products at 16 bits; full 8-bit weights lost 1.1
  points of ResNet-20 accuracy on an AVX2 EPYC (88.94% vs 89.92%), 7-bit ones none that mattered. A
  file is quantized once and may run on any CPU, so it is made safe for all of them;
- min/max calibration: percentile and entropy calibration were no better here (within 0.04 points).

PyTorch's own PT2E flow (torchao's X86InductorQuantizer, then ``torch.compile``) was measured against
this one (``benchmarks/int8.py``); see docs/performance.md for why this one is kept.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, checkpoint_dataset
from .data.augment import preprocess_eval
from .data.images import expand_paths, load_images
from .errors import CheckpointError, DataError, ReslabError
from .inference import fold_batchnorm
from .onnxio import INPUT, OnnxRuntimeModel, onnx_bytes, require_onnxruntime

CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 32


def calibration_images(checkpoint: Checkpoint, folder: str | Path | None = None, data_root: str | None = None,
                       count: int = CALIBRATION_IMAGES, seed: int = 0) -> tuple[torch.Tensor, str]:
    """uint8 (N, C, H, W) images to calibrate on, and what they are: ``count`` images drawn (seeded)
    from ``folder`` (any image files in it, at any depth) or else from the checkpoint's training split,
    when it is on disk."""
    generator = torch.Generator().manual_seed(seed)
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"--calibration {folder}: not a folder of images")
        files = expand_paths([folder])
        chosen = [files[i] for i in sorted(torch.randperm(len(files), generator=generator)[:count].tolist())]
        return load_images(chosen, checkpoint.spec.in_channels, checkpoint.input_size), f"{len(chosen)} images from {folder}"
    try:  # never a download: a prediction should not fetch a dataset to calibrate on
        arrays = checkpoint_dataset(checkpoint, None, data_root, "train", download=False)
    except ReslabError as exc:
        raise DataError(f"int8 calibration needs images the model was trained on: {exc} (give --data-root, or "
                        "--calibration FOLDER of images)") from None
    indices = torch.randperm(len(arrays), generator=generator)[:count]
    return arrays.images[indices], f"{len(indices)} {arrays.name} images"


def quantize(checkpoint: Checkpoint, images: torch.Tensor) -> bytes:
    """The checkpoint's network, BN folded, as an int8 ONNX file (QDQ) calibrated on ``images``
    (uint8, as ``calibration_images`` gives them). Same input and output as the float export."""
    require_onnxruntime()
    model = fold_batchnorm(checkpoint.build_model())
    if not all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()):
        raise CheckpointError(f"{checkpoint.path}: the weights hold NaN or infinity, so they cannot be quantized")
    x = preprocess_eval(images, checkpoint.normalizer)
    with torch.inference_mode():
        if not torch.isfinite(model(x[:CALIBRATION_BATCH])).all():
            raise CheckpointError(f"{checkpoint.path}: non-finite outputs on calibration images, so the model "
                                  "cannot be quantized")
    return quantize_model(model, x)


def quantize_model(model: nn.Module, calibration: torch.Tensor) -> bytes:
    """``model`` (BN folded, eval mode) as an int8 ONNX file, calibrated on ``calibration``:
    normalised float (N, C, H, W) images, as the model takes them."""
    require_onnxruntime()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    x = calibration
    example = x[:2] if len(x) >= 2 else x.repeat(2, 1, 1, 1)  # the export traces with a batch of 2 or more
    float_model = onnx_bytes(model, example)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(x.split(CALIBRATION_BATCH))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch.numpy()}

    with tempfile.TemporaryDirectory(prefix="reslab-int8-") as tmp, _quiet_quantizer():
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(float_model)
        quantize_static(source, target, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return target.read_bytes()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs on the root logger, advising a pre-processing step (shape inference and graph
    optimisation) that made no measured difference for these models."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def int8_model(checkpoint: Checkpoint, calibration: str | Path | None = None, data_root: str | None = None,
               threads: int | None = None) -> tuple[OnnxRuntimeModel, str]:
    """The int8 model as a module (float32 images in, float32 logits out), and what it was calibrated on."""
    images, source = calibration_images(checkpoint, calibration, data_root)
    return OnnxRuntimeModel(quantize(checkpoint, images), threads), source
