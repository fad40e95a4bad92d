"""Datasets by name or path, as in-memory ``ImageArrays``, plus the batch loaders that feed them.

Names: ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``digits`` (bundled with
scikit-learn; no download). A path may be a folder of class folders (``root/<class>/<image>``,
optionally already split as ``root/train/<class>`` + ``root/val/<class>``), a folder holding
``cifar-10-batches-py`` / ``cifar-100-python``, or a folder of IDX files.

Splits: ``train`` and ``val`` are the deterministic stratified split of the training set
(``val_fraction`` per class, the last images in file order: 45k/5k on CIFAR-10, as paper Sec. 4.2);
``trainval`` is the whole training set; ``test`` the official test set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .arrays import AugmentDefaults, ImageArrays, stratified_split
from .augment import NORMALIZATIONS, Normalizer
from .cifar import FORMATS as CIFAR_FORMATS
from .cifar import load_cifar
from .digits import load_digits
from .folder import list_class_folders, load_folder
from .idx import CLASSES as IDX_CLASSES
from .idx import load_idx, load_idx_pair, _find
from .loader import Batch, EvalLoader, TrainLoader

NAMED = ("cifar10", "cifar100", "mnist", "fashion-mnist", "digits")
SPLITS = ("train", "val", "trainval", "test")

__all__ = ["AugmentDefaults", "DataOptions", "EvalLoader", "ImageArrays", "NAMED", "NORMALIZATIONS",
           "Batch", "Normalizer", "SPLITS", "TrainLoader", "data_root", "load_dataset"]


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$RESLAB_DATA``, else ``~/.cache/reslab/data`` (``$XDG_CACHE_HOME`` honoured)."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("RESLAB_DATA"):
        return Path(os.environ["RESLAB_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "reslab" / "data"


@dataclass(frozen=True)
class DataOptions:
    """How to read a dataset; the defaults suit every named dataset."""

    root: str | None = None  # data folder for named datasets (see data_root)
    val_fraction: float = 0.1  # per class, held out as the validation split
    image_size: int | None = None  # image folders: resize + centre-crop to this side
    channels: int = 3  # image folders: 3 (RGB) or 1 (grayscale)
    strict: bool = False  # image folders: fail on unreadable or non-image files instead of skipping
    download: bool = True  # named datasets: download when absent


def _base_split(source: str, base: str, opts: DataOptions) -> ImageArrays:
    """The source's own "train" or "test" set."""
    root = data_root(opts.root)
    if source in (*CIFAR_FORMATS, *IDX_CLASSES) and root.exists() and not root.is_dir():
        raise DataError(f"{root}: not a folder (the data root holds {source}'s files or folder)")
    if source in CIFAR_FORMATS:
        return load_cifar(source, root, base, download=opts.download)
    if source in IDX_CLASSES:
        return load_idx(source, root, base)
    if source == "digits":
        if base == "test":
            raise DataError("digits has no separate test split; use --split val")
        return load_digits()
    return _path_split(Path(source).expanduser(), base, opts)


def _path_split(path: Path, base: str, opts: DataOptions) -> ImageArrays:
    if not path.exists():
        known = ", ".join(NAMED)
        raise DataError(f"{path}: no such dataset or folder (named datasets: {known})")
    for name, fmt in CIFAR_FORMATS.items():
        if (path / fmt.folder).is_dir() or path.name == fmt.folder:
            root = path.parent if path.name == fmt.folder else path
            return load_cifar(name, root, base, download=False)
    if _find(path, "train-images-idx3-ubyte"):
        prefix = "t10k" if base == "test" else "train"
        images, labels = _find(path, f"{prefix}-images-idx3-ubyte"), _find(path, f"{prefix}-labels-idx1-ubyte")
        if images is None or labels is None:
            raise DataError(f"{path}: {prefix}-images/labels IDX files missing")
        return load_idx_pair(images, labels, [str(i) for i in range(10)], f"{path.name}-{base}")
    cache = data_root(opts.root) / "folder-cache"
    split_dir = {"train": "train", "test": "test"}[base]
    if (path / "train").is_dir() and _has_class_folders(path / "train"):
        sub = path / split_dir
        if not sub.is_dir():
            raise DataError(f"{path}: has train/ but no {split_dir}/ folder")
        return load_folder(sub, channels=opts.channels, image_size=opts.image_size, strict=opts.strict,
                           cache_dir=cache)
    if base == "test":
        raise DataError(f"{path}: a single folder of classes has no test split; use --split val")
    return load_folder(path, channels=opts.channels, image_size=opts.image_size, strict=opts.strict,
                       cache_dir=cache)


def _has_class_folders(path: Path) -> bool:
    try:
        list_class_folders(path)
    except DataError:
        return False
    return True


def load_dataset(source: str | Path, split: str = "train", options: DataOptions | None = None) -> ImageArrays:
    """One split of a dataset as ``ImageArrays`` (see the module docstring for names and splits)."""
    opts = options or DataOptions()
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    source = str(source)
    if split == "test":
        return _base_split(source, "test", opts)
    full = _base_split(source, "train", opts)
    if split == "trainval":
        return full
    path = Path(source)
    if source not in NAMED and (path / "val").is_dir() and (path / "train").is_dir():
        # Already split on disk: train/ and val/ folders.
        if split == "train":
            return full
        return load_folder(path / "val", channels=opts.channels, image_size=opts.image_size or full.image_size,
                           strict=opts.strict, cache_dir=data_root(opts.root) / "folder-cache")
    train_idx, val_idx = stratified_split(full.labels, opts.val_fraction)
    base = full.name.removesuffix("-train")
    return full.subset(train_idx if split == "train" else val_idx, f"{base}-{split}")
