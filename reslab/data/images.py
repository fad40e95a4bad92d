"""Image files named by the user (``predict``, ``explain``, ``features``, int8 calibration), found and
read the way the models saw their training images: shorter side resized, centre crop, uint8."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError

from ..errors import DataError
from .folder import IMAGE_SUFFIXES, decode_image


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
