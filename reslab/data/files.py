"""A folder of class folders as a list of files, for the loaders that read images as they go
(reslab/data/stream.py) instead of holding the decoded dataset in memory.

The list is kept as one numpy array of relative paths (bytes) and one of labels: about as many bytes per
image as its path is long, no Python object per file, so worker processes forked from the trainer share
it without copying (reference counts would make them copy a list of objects page by page).

Splits follow ``load_dataset``'s: ``root/train`` + ``root/val`` when the folder has them, else the
stratified split of the one folder (the last ``val_fraction`` of each class, in file order).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .arrays import AugmentDefaults, stratified_split
from .folder import (
    _pixel_limit,
    _report_skipped,
    _to_8_bits,
    list_class_folders,
    open_regular_file,
)


@dataclass
class ImageFiles:
    """Image files with their labels; ``image_size`` is the side of the crops the model is fed."""

    root: Path
    paths: np.ndarray  # relative to root, bytes (numpy "S")
    labels: torch.Tensor
    classes: list[str]
    name: str
    channels: int
    image_size: int
    augment: AugmentDefaults = field(default_factory=lambda: AugmentDefaults(pad=0, flip=True))

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, row: int) -> Path:
        return self.root / self.paths[row].decode()

    def subset(self, rows: torch.Tensor, name: str) -> ImageFiles:
        index = rows.numpy()
        return ImageFiles(self.root, self.paths[index], self.labels[rows], self.classes, name, self.channels,
                          self.image_size, self.augment)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def list_files(root: Path, channels: int, image_size: int, strict: bool = False) -> ImageFiles:
    """The image files of ``root/<class>/...``; files without an image suffix are skipped and named."""
    root = Path(root)
    classes, items, skipped = list_class_folders(root)
    if len(classes) < 2:
        raise DataError(f"{root}: only one class folder ({classes[0]}/); a classifier needs at least 2 classes")
    _report_skipped(root, skipped, "non-image file(s)", strict)
    paths = np.array([str(p.relative_to(root)).encode() for p, _ in items], dtype=np.bytes_)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ImageFiles(root, paths, labels, classes, root.name, channels, image_size)


def folder_split(source: Path, split: str, channels: int, image_size: int, val_fraction: float,
                 strict: bool = False) -> ImageFiles:
    """One split (train, val, trainval, test) of an image folder, as files."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DataError(f"{source}: streaming reads image folders (root/<class>/<image>); no such folder")
    presplit = (source / "train").is_dir() and _has_classes(source / "train")
    if split == "test":
        if not presplit or not (source / "test").is_dir():
            raise DataError(f"{source}: no test/ folder of classes; use --split val")
        return list_files(source / "test", channels, image_size, strict)
    if presplit:
        if split == "val":
            if not (source / "val").is_dir():
                raise DataError(f"{source}: has train/ but no val/ folder")
            return list_files(source / "val", channels, image_size, strict)
        return list_files(source / "train", channels, image_size, strict)
    full = list_files(source, channels, image_size, strict)
    if split == "trainval":
        return full
    train, val = stratified_split(full.labels, val_fraction)
    return full.subset(train if split == "train" else val, f"{full.name}-{split}")


def _has_classes(path: Path) -> bool:
    try:
        list_class_folders(path)
    except DataError:
        return False
    return True


def is_image_folder(source: str) -> bool:
    path = Path(source).expanduser()
    if not path.is_dir():
        return False
    inner = path / "train" if (path / "train").is_dir() else path
    if any((path / name).exists() for name in ("cifar-10-batches-py", "cifar-100-python")):
        return False
    return _has_classes(inner) and not any(inner.glob("*-idx?-ubyte*"))


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """The image at ``path``, its header read and its pixels not yet (so a JPEG can still be asked to
    decode at a reduced size); regular files only, Pillow's pixel limit as one ``DataError``."""
    with open_regular_file(path) as file, _pixel_limit(path), Image.open(file) as img:
        yield img


def as_mode(img: Image.Image, channels: int) -> Image.Image:
    """Decoded, 8 bits, RGB or L (as reslab.data.folder.decode_image does)."""
    img.load()
    return _to_8_bits(img).convert("L" if channels == 1 else "RGB")
