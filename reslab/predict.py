"""Classify image files with a trained checkpoint, preprocessed the way the model was trained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint, mirrored_in_training
from .data.arrays import ImageArrays
from .data.augment import preprocess_eval
from .data.images import expand_paths, load_images
from .errors import ConfigError
from .inference import (
    compiled_for_inference,
    optimize_for_inference,
    with_test_time_augmentation,
)


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), best first

    def to_dict(self) -> dict:
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top]}


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
            calibration: str | Path | None = None, data_root: str | None = None,
            compile: bool = False) -> list[Prediction]:
    """``precision="int8"``: the model quantized (``quantize``) on the images of the ``calibration``
    folder, or else on its training split (found under ``data_root``). ``compile``: float32 or bfloat16
    through ``torch.compile`` (``inference.compiled_for_inference``), for many images."""
    check_tta(checkpoint, tta)
    files = expand_paths(paths)
    if precision == "int8":
        from .quantize import int8_model

        model = int8_model(checkpoint, calibration, data_root)[0]
    else:
        model = optimize_for_inference(checkpoint.build_model(), precision)
        if compile:
            model = compiled_for_inference(model)
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
