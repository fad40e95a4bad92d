"""MNIST-format (IDX) files: MNIST and Fashion-MNIST, gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .arrays import AugmentDefaults, ImageArrays

CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
}
# Where Debian's dataset-fashion-mnist package installs the files.
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")], "mnist": [Path("/usr/share/datasets/mnist")]}
PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (magic 0x00 0x00 type ndim, big-endian sizes, then the data) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{path}: holds {len(data) - header} bytes of data, its header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def find_idx_folder(name: str, root: Path) -> Path:
    candidates = [root / name, root] + SYSTEM_DIRS.get(name, [])
    for folder in candidates:
        if _find(folder, "train-images-idx3-ubyte"):
            return folder
    hint = " (or `apt-get install dataset-fashion-mnist`)" if name == "fashion-mnist" else ""
    raise DataError(f"{name}: no train-images-idx3-ubyte[.gz] in {', '.join(map(str, candidates))}{hint}")


def load_idx_pair(images_path: Path, labels_path: Path, classes: list[str], name: str) -> ImageArrays:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{images_path}: expected N x H x W images and N labels")
    if len(images) != len(labels):
        raise DataError(f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels")
    return ImageArrays(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                       classes, name, AugmentDefaults(pad=2, flip=name.startswith("fashion")))


def load_idx(name: str, root: Path, split: str) -> ImageArrays:
    folder = find_idx_folder(name, root)
    prefix = PREFIX["test" if split == "test" else "train"]
    images = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        raise DataError(f"{name}: {prefix}-images/labels IDX files missing in {folder}")
    return load_idx_pair(images, labels, CLASSES[name], f"{name}-{split}")
