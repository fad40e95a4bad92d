"""scikit-learn's bundled 8x8 handwritten digits (1,797 real scans): a dataset that needs no
download, so that a first training run works offline in about a minute."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .arrays import AugmentDefaults, ImageArrays


def load_digits() -> ImageArrays:
    pixels, labels = _read_digits()
    # Pixel values are 0..16; scale to the 0..255 of every other dataset.
    images = torch.from_numpy(pixels).mul(255 / 16).round().clamp(0, 255).to(torch.uint8).view(-1, 1, 8, 8)
    # 8x8 maps: pad 1 pixel for the random crop; no flips (a flipped digit is another glyph).
    return ImageArrays(images, torch.from_numpy(labels).long(), [str(i) for i in range(10)], "digits",
                       AugmentDefaults(pad=1, flip=False))


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(pixels N x 64, labels N), read straight from the data file scikit-learn ships: importing
    scikit-learn to call its loader took 1.4 s of every run's start on this project's 2-core CPU, the
    file 25 ms. Its loader is the fallback, should the file move in another version."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise DataError("the digits dataset needs scikit-learn: pip install 'reslab[digits]'")
    shipped = [Path(p) / "datasets" / "data" / "digits.csv.gz" for p in spec.submodule_search_locations or []]
    if shipped and shipped[0].is_file():
        table = np.loadtxt(shipped[0], delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.data, bunch.target
