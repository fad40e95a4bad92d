"""Classify image files with a trained checkpoint, preprocessed the way the model was trained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import UnidentifiedImageError

from .data.arrays import ImageArrays
from .data.augment import preprocess_eval
from .data.folder import IMAGE_SUFFIXES, decode_image
from .errors import ConfigError, DataError
from .inference import optimize_for_inference, with_test_time_augmentation
from .checkpoint import Checkpoint, mirrored_in_training


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), best first

    def to_dict(self) -> dict:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (sorted, recursive)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: no image files in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file")
    return files


def load_images(paths: Sequence[Path], channels: int, size: int) -> torch.Tensor:
    """uint8 (N, C, size, size): shorter side resized to ``size``, centre crop, as in training."""
    arrays = []
    for path in paths:
        try:
            arrays.append(decode_image(path, channels, size))
        except (UnidentifiedImageError, OSError, ValueError):
            raise DataError(f"{path}: not a readable image") from None
    return torch.from_numpy(np.stack(arrays))


def check_tta(checkpoint: Checkpoint, tta: str, data: ImageArrays | None = None) -> None:
    """Flip TTA assumes that a mirror image is the same class, as it is for models trained on mirrored
    images; refuse it for models trained without (digits: a mirrored glyph is another one). ``data``
    (the model's dataset) decides for checkpoints that did not record it."""
    if tta == "flip" and mirrored_in_training(checkpoint, data) is False:
        raise ConfigError(f"--tta flip: {checkpoint.path} was trained without mirrored images, so for it a mirror "
                          "image need not be the same class")


@torch.inference_mode()
def predict(checkpoint: Checkpoint, paths: Sequence[str | Path], top_k: int = 3,
            batch_size: int = 256, precision: str = "float32", tta: str = "none",
            calibration: str | Path | None = None, data_root: str | None = None) -> list[Prediction]:
    """``precision="int8"``: the model quantized (``quantize``) on the images of the ``calibration``
    folder, or else on its training split (found under ``data_root``)."""
    check_tta(checkpoint, tta)
    files = expand_paths(paths)
    if precision == "int8":
        from .quantize import int8_model

        model = int8_model(checkpoint, calibration, data_root)[0]
    else:
        model = optimize_for_inference(checkpoint.build_model(), precision)
    model = with_test_time_augmentation(model, tta)
    k = max(1, min(top_k, len(checkpoint.classes)))
    results = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images = load_images(chunk, checkpoint.spec.in_channels, checkpoint.input_size)
        probs = model(preprocess_eval(images, checkpoint.normalizer)).softmax(1)
        values, indices = probs.topk(k, dim=1)
        for path, vals, idxs in zip(chunk, values.tolist(), indices.tolist()):
            results.append(Prediction(str(path), [(checkpoint.classes[i], v) for v, i in zip(vals, idxs)]))
    return results
