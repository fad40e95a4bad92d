"""A one-time resized copy of an image folder on disk, read by random access (the approach of FFCV).

Every readable image is decoded once, its shorter side reduced to ``side`` pixels (never enlarged), and
its pixels appended, raw uint8 height x width x channels, to one file; an index holds each image's
offset, height, width and label. Training reads an image as a slice of a memory map of that file: no
JPEG decode, and the operating system's page cache (not the process) holds what is hot, so the
trainer's memory stays flat whatever the folder's size.

The cache lives in the data folder under a key of every file's path, size and modification time and
the settings (as the in-memory folder cache), so a changed folder is read again. It is built in worker
processes and written by one, to a temporary folder renamed into place when complete: an interrupted
build leaves no half cache behind. Unreadable images are skipped and named, as everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .crops import resize_shorter
from .files import ImageFiles, as_mode, open_image
from .folder import _report_skipped

FORMAT_VERSION = 1


def cache_key(files: ImageFiles, side: int) -> str:
    digest = hashlib.sha1(json.dumps([FORMAT_VERSION, str(files.root.resolve()), files.channels, side]).encode())
    for rel, label in zip(files.paths, files.labels.tolist()):
        st = (files.root / rel.decode()).stat()
        digest.update(rel + f"|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def estimate_bytes(files: ImageFiles, side: int, sample: int = 64) -> int:
    """The cache's size, from the headers of up to ``sample`` files spread over the folder."""
    rows = np.linspace(0, len(files) - 1, min(sample, len(files))).round().astype(int)
    pixels = []
    for row in rows:
        try:
            with open_image(files.path(int(row))) as img:
                w, h = img.size
        except (DataError, UnidentifiedImageError, OSError, ValueError):
            continue
        scale = min(1.0, side / min(w, h))
        pixels.append(round(w * scale) * round(h * scale))
    return int(np.mean(pixels) * files.channels * len(files)) if pixels else 0


class _Shrunk(torch.utils.data.Dataset):
    """Image ``row`` with its shorter side at most ``side``, as (H, W, C) uint8; None when unreadable."""

    def __init__(self, files: ImageFiles, side: int):
        self.files, self.side = files, side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int) -> np.ndarray | None:
        try:
            with open_image(self.files.path(row)) as img:
                w, h = img.size
                if min(w, h) > self.side and img.format == "JPEG":
                    img.draft(None, (max(1, w * self.side // min(w, h)), max(1, h * self.side // min(w, h))))
                img = as_mode(img, self.files.channels)
                if min(img.size) > self.side:
                    img = resize_shorter(img, self.side)
                array = np.asarray(img, dtype=np.uint8)
        except (DataError, UnidentifiedImageError, OSError, ValueError):
            return None
        return array[:, :, None] if array.ndim == 2 else array


class CachedImages:
    """The cache of one folder: ``files`` (its readable images) and, by row, each one's pixels."""

    def __init__(self, folder: Path, files: ImageFiles, index: np.ndarray):
        self.folder, self.files = folder, files
        self.offsets, self.heights, self.widths = index
        self._pixels: np.memmap | None = None

    def open(self, row: int) -> contextlib.AbstractContextManager[Image.Image]:
        if self._pixels is None:  # mapped in the process that reads (each worker its own map)
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        h, w, c = int(self.heights[row]), int(self.widths[row]), self.files.channels
        start = int(self.offsets[row])
        array = np.asarray(self._pixels[start:start + h * w * c]).reshape(h, w, c)
        return contextlib.nullcontext(Image.fromarray(array[:, :, 0] if c == 1 else array))

    def subset(self, rows: torch.Tensor, name: str) -> CachedImages:
        index = np.stack([self.offsets, self.heights, self.widths])[:, rows.numpy()]
        return CachedImages(self.folder, self.files.subset(rows, name), index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}


def open_cache(files: ImageFiles, side: int, cache_dir: Path, workers: int, strict: bool = False,
               say=print) -> CachedImages:
    """The cache of ``files`` at ``side``, built first when there is none."""
    folder = Path(cache_dir) / f"resized-{side}-{cache_key(files, side)}"
    if not (folder / "index.npy").exists():
        _build(files, side, folder, workers, strict, say)
    kept = np.load(folder / "rows.npy")
    if strict and len(kept) < len(files):  # built by a run that skipped what this one must refuse
        missing = sorted(set(range(len(files))) - set(kept.tolist()))
        raise DataError(f"{files.root}: {len(missing)} unreadable image(s), e.g. {files.path(missing[0])} (--strict)")
    readable = files.subset(torch.from_numpy(kept), files.name)
    empty = [name for name, count in zip(files.classes, readable.class_counts()) if count == 0]
    if empty:
        raise DataError(f"{files.root / empty[0]}: class folder has no readable images")
    return CachedImages(folder, readable, np.load(folder / "index.npy"))


def _build(files: ImageFiles, side: int, folder: Path, workers: int, strict: bool, say) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    say(f"caching {len(files):,} images of {files.root} at shorter side <= {side} px in {folder} (once)")
    loader = torch.utils.data.DataLoader(_Shrunk(files, side), batch_size=None, num_workers=workers,
                                         collate_fn=lambda x: x, prefetch_factor=8 if workers else None)
    offsets, heights, widths, kept, unreadable = [], [], [], [], []
    offset = 0
    try:
        with open(temp / "pixels.u8", "wb") as out:
            for row, array in enumerate(loader):
                if array is None:
                    unreadable.append(files.path(row))
                    continue
                out.write(array.tobytes())
                offsets.append(offset)
                heights.append(array.shape[0])
                widths.append(array.shape[1])
                kept.append(row)
                offset += array.nbytes
            out.flush()
            os.fsync(out.fileno())
        _report_skipped(files.root, unreadable, "unreadable image(s)", strict)
        if not kept:
            raise DataError(f"{files.root}: no readable images")
        np.save(temp / "index.npy", np.array([offsets, heights, widths], dtype=np.int64))
        np.save(temp / "rows.npy", np.array(kept, dtype=np.int64))
        try:
            temp.rename(folder)
        except OSError:  # another process finished the same cache first: theirs is as good
            shutil.rmtree(temp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
