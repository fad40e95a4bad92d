"""Pooled features of image files: what a trained network's classifier reads (the global average pool's
output), for other models to use. Images are read as ``reslab predict`` reads them, a batch at a time.

Given one folder laid out as ``root/<class>/...`` the features come with labels: the class folders in
sorted order, as training on that folder numbers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint
from .data.augment import preprocess_eval
from .fileio import atomic_write_with
from .inference import optimize_for_inference
from .data.images import expand_paths, load_images


@dataclass
class ImageFeatures:
    features: np.ndarray  # (N, D) float32
    paths: list[str]  # relative to the folder given, or as given
    labels: np.ndarray | None = None  # (N,) int64 class index, when the folder is root/<class>/...
    classes: list[str] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"features": self.features, "paths": np.array(self.paths, dtype=str)}
        if self.labels is not None:
            out.update(labels=self.labels, classes=np.array(self.classes, dtype=str))
        return out


@torch.inference_mode()
def image_features(checkpoint: Checkpoint, paths: Sequence[str | Path], batch_size: int = 256) -> ImageFeatures:
    """The pooled features of every image in ``paths`` (files, or folders searched recursively)."""
    files = expand_paths(paths)
    model = optimize_for_inference(checkpoint.build_model())  # BN folded: the same features up to rounding
    features = np.empty((len(files), checkpoint.spec.out_channels), dtype=np.float32)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        x = preprocess_eval(load_images(chunk, checkpoint.spec.in_channels, checkpoint.input_size), checkpoint.normalizer)
        features[start:start + len(chunk)] = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    root = Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else None
    if root is None:
        return ImageFeatures(features, [str(f) for f in files])
    relative = [f.relative_to(root) for f in files]
    names = [str(r) for r in relative]
    if any(len(r.parts) < 2 for r in relative):  # images beside the class folders: no labels
        return ImageFeatures(features, names)
    classes = sorted({r.parts[0] for r in relative})
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[r.parts[0]] for r in relative], dtype=np.int64)
    return ImageFeatures(features, names, labels, classes)


def save_features(features: ImageFeatures, out: Path) -> Path:
    """``out`` as a NumPy .npz (``features``, ``paths``, and ``labels`` + ``classes`` when known), written
    atomically."""
    def write(file) -> None:
        np.savez(file, **features.arrays())

    return atomic_write_with(out, write)
