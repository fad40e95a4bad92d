"""scikit-learn's bundled 8x8 handwritten digits (1,797 real scans): a dataset that needs no
download, so that a first training run works offline in about a minute."""

from __future__ import annotations

import torch

from ..errors import DataError
from .arrays import AugmentDefaults, ImageArrays


def load_digits() -> ImageArrays:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install 'reslab[digits]'") from None
    bunch = sk_load_digits()
    # Pixel values are 0..16; scale to the 0..255 of every other dataset.
    images = torch.from_numpy(bunch.images).mul(255 / 16).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    # 8x8 maps: pad 1 pixel for the random crop; no flips (a flipped digit is another glyph).
    return ImageArrays(images, labels, [str(i) for i in range(10)], "digits", AugmentDefaults(pad=1, flip=False))
