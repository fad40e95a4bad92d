"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

Looks in the data folder for the extracted folder, then for the archive, then, when online, downloads
the archive from the official address. An archive, found or downloaded, must have its published MD5
(``RESLAB_SKIP_MD5=1`` waives that for a found one) and is extracted safely; the pickles inside are
read without running code (``pickles.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fileio import file_digest
from .arrays import ImageArrays
from .download import download_file, safe_extract
from .pickles import load_data_pickle

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
SKIP_MD5_VARIABLE = "RESLAB_SKIP_MD5"


@dataclass(frozen=True)
class CifarFormat:
    archive: str
    md5: str  # published at https://www.cs.toronto.edu/~kriz/cifar.html
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


FORMATS = {
    "cifar10": CifarFormat("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                           "labels", "label_names"),
    "cifar100": CifarFormat("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
                            ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}


def _load_pickle(path: Path) -> dict[str, object]:
    """A CIFAR pickle with its keys as str, whether they were written as bytes (Python 2) or str."""
    raw = load_data_pickle(path, "CIFAR")
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a CIFAR pickle (found {type(raw).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _names(values: list[object]) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def check_present_archive(archive: Path, md5: str) -> None:
    """An archive found in the data folder is held to the published MD5, as a download is: whoever put
    it there need not be trusted. ``RESLAB_SKIP_MD5=1`` accepts a user's own re-packed copy."""
    if os.environ.get(SKIP_MD5_VARIABLE) == "1":
        return
    got = file_digest(archive, "md5")
    if got != md5:
        raise DataError(f"{archive}: MD5 {got} is not the published {md5}; if this is your own re-packed "
                        f"copy, set {SKIP_MD5_VARIABLE}=1 to use it unchecked")


def locate(name: str, root: Path, download: bool = True, base_url: str = BASE_URL) -> Path:
    """The extracted CIFAR folder under ``root``, extracting or downloading the archive as needed."""
    fmt = FORMATS[name]
    folder = root / fmt.folder
    if (folder / fmt.meta_file).exists():
        return folder
    archive = root / fmt.archive
    if folder.exists():
        raise DataError(f"{folder}: has no {fmt.meta_file} (incomplete?); move it away so that reslab can "
                        f"extract {fmt.archive} there")
    if archive.exists():
        check_present_archive(archive, fmt.md5)
    elif not download:
        raise DataError(f"{name}: not found; put {fmt.archive} (or the extracted {fmt.folder}/) in {root}")
    else:
        try:
            download_file(base_url + fmt.archive, archive, fmt.md5)
        except DataError as exc:
            raise DataError(f"{exc}; offline? put {fmt.archive} (or the extracted {fmt.folder}/) in {root}") from None
    try:
        safe_extract(archive, root, fmt.folder)
    except DataError:
        # Members of an experiment started side by side on a fresh machine all find the folder missing;
        # the first to extract wins, and the others read what it wrote.
        if (folder / fmt.meta_file).exists():
            return folder
        raise
    if not (folder / fmt.meta_file).exists():
        raise DataError(f"{archive}: not a {name} archive (no {fmt.meta_file} in its {fmt.folder}/)")
    return folder


def load_cifar(name: str, root: Path, split: str, download: bool = True, base_url: str = BASE_URL) -> ImageArrays:
    """``split``: "train" (all 50k training images) or "test"."""
    fmt = FORMATS[name]
    folder = locate(name, root, download, base_url)
    meta = _load_pickle(folder / fmt.meta_file)
    if fmt.names_key not in meta:
        raise DataError(f"{folder / fmt.meta_file}: no {fmt.names_key} in the metadata")
    if not isinstance(meta[fmt.names_key], (list, tuple)):
        raise DataError(f"{folder / fmt.meta_file}: {fmt.names_key} is not a list of names")
    classes = _names(meta[fmt.names_key])  # type: ignore[arg-type]
    files = fmt.train_files if split == "train" else fmt.test_files
    if split == "test" and not (folder / files[0]).exists():
        raise DataError(f"{name}: this copy has no test split ({folder / files[0]} is missing); "
                        "use the validation split (--split val)")
    images, labels = [], []
    for file in files:
        batch = _load_pickle(folder / file)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            batch_labels = np.asarray(batch[fmt.label_key], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{folder / file}: no {exc} entry; not a {name} batch") from None
        except (ValueError, TypeError, OverflowError):
            raise DataError(f"{folder / file}: its data or labels are not arrays of numbers; not a {name} batch") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != len(data):
            raise DataError(f"{folder / file}: expected N x 3072 pixels and N labels, got {data.shape} "
                            f"and {len(batch_labels)}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return ImageArrays(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                       classes, f"{name}-{split}")
