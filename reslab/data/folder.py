"""A user's own images: ``root/<class name>/<image>``, decoded once and cached as a uint8 tensor.

The cache key covers every file's path, size and modification time plus the decode settings, so
adding, removing or editing an image (or asking for another size) decodes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..fileio import atomic_torch_save
from .arrays import AugmentDefaults, ImageArrays

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def list_class_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    """Class names (sorted folder names), (file, label) pairs, and the files skipped: those without an
    image suffix and those that are not regular files."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders inside (expected {root}/<class name>/<image files>)")
    items, skipped = [], []
    for label, name in enumerate(classes):
        entries = sorted(p for p in (root / name).rglob("*") if not p.name.startswith(".") and not p.is_dir())
        # is_file() is true for regular files only: a named pipe, socket or device is never opened
        # (reading one can block for ever), whatever its name; it is skipped and named like a text file.
        images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [p for p in entries if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"{root / name}: class folder has no images")
        items += [(p, label) for p in images]
    return classes, items, skipped


PIXEL_LIMIT_VARIABLE = "RESLAB_MAX_IMAGE_PIXELS"


def decode_image(path: Path, channels: int, image_size: int | None) -> np.ndarray:
    """(C, H, W) uint8. With ``image_size``: shorter side resized to it, then a centre crop.

    Reads regular files only (a pipe or device would block or never end), and refuses images over
    Pillow's pixel limit (``$RESLAB_MAX_IMAGE_PIXELS`` raises it) with a ``DataError``."""
    with open_regular_file(path) as file, _pixel_limit(path), Image.open(file) as img:
        img.load()
        img = _to_8_bits(img)
        # RGBA/LA/P: drop alpha over black; L -> RGB replicates gray.
        img = img.convert("L" if channels == 1 else "RGB")
        if image_size is not None and img.size != (image_size, image_size):
            w, h = img.size
            scale = image_size / min(w, h)
            img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                             Image.BILINEAR)
            w, h = img.size
            left, top = (w - image_size) // 2, (h - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def open_regular_file(path: Path) -> BinaryIO:
    """``path`` opened for reading, or a ``DataError`` when it is not a regular file. Opened without
    blocking and checked on the open descriptor, so a named pipe cannot stall the open or the read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DataError(f"{path}: {_kind(mode)}, not a regular file; only image files are read")
    return os.fdopen(fd, "rb")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a special file"


@contextlib.contextmanager
def _pixel_limit(path: Path) -> Iterator[None]:
    """Pillow's guard against decompression bombs, as one clear error. Pillow only warns between its
    limit and twice that; here the limit itself is the line."""
    limit = _max_image_pixels()
    if limit is None:  # switched off by the program that uses reslab
        yield
        return
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: more pixels than the limit of {limit:,} (Pillow's guard against "
                        f"decompression bombs); set {PIXEL_LIMIT_VARIABLE}=N to allow larger images") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _max_image_pixels() -> int | None:
    text = os.environ.get(PIXEL_LIMIT_VARIABLE)
    if not text:
        return Image.MAX_IMAGE_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(f"{PIXEL_LIMIT_VARIABLE} must be a positive number of pixels, got {text!r}")
    return limit


def _to_8_bits(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale images as 8-bit "L". Pillow's own conversion clips
    at 255, which turns nearly every such image white."""
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))  # the type's range
    if img.mode not in ("I", "F"):
        return img
    values = np.asarray(img, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if img.mode == "I" and low >= 0 and high <= 65535:
        # Mode "I" is how Pillow hands out most 16-bit PNGs and TIFFs, so 0..65535 is read as 16 bits:
        # the type's range keeps a dark image dark. Its 32-bit range would make every photo black.
        scaled = values / 257
    elif img.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255  # floats in 0..1, the usual convention for float images
    else:
        # No range to go by (negative or huge values): the image's own min..max is the only scale it has.
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _cache_key(root: Path, items: list[tuple[Path, int]], channels: int, image_size: int | None,
               strict: bool) -> str:
    # strict is part of the key: a cache decoded without it may have skipped unreadable images, which
    # a strict run must refuse.
    digest = hashlib.sha1(json.dumps([str(root.resolve()), channels, image_size, strict]).encode())
    for path, label in items:
        st = path.stat()
        digest.update(f"{path.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _report_skipped(root: Path, paths: list[Path], what: str, strict: bool) -> None:
    """Name (up to five of) the files left out; with ``strict`` they are an error instead."""
    if not paths:
        return
    if strict:
        raise DataError(f"{root}: {len(paths)} {what}, e.g. {paths[0]} (--strict)")
    names = ", ".join(str(p.relative_to(root)) for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
    warnings.warn(f"{root}: skipped {len(paths)} {what}: {names}", stacklevel=3)


def load_folder(root: Path, *, channels: int = 3, image_size: int | None = None, strict: bool = False,
                cache_dir: Path | None = None) -> ImageArrays:
    root = Path(root)
    classes, items, skipped = list_class_folders(root)
    if len(classes) < 2:
        # One class would train a model that cannot be wrong: 100% accuracy that means nothing.
        raise DataError(f"{root}: only one class folder ({classes[0]}/); a classifier needs at least 2 classes")
    _report_skipped(root, skipped, "non-image file(s)", strict)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"folder-{_cache_key(root, items, channels, image_size, strict)}.pt"
        if cache_file.exists():
            try:
                cached = torch.load(cache_file, weights_only=True)
                return ImageArrays(cached["images"], cached["labels"], list(cached["classes"]), root.name,
                                   _augment_for(cached["images"].shape[-1]))
            except Exception:  # a broken cache is only a cache: decode again
                cache_file.unlink(missing_ok=True)
    arrays, labels, unreadable, sizes = [], [], [], {}
    for path, label in items:
        try:
            image = decode_image(path, channels, image_size)
        except (DataError, UnidentifiedImageError, OSError, ValueError):
            unreadable.append(path)
            continue
        sizes.setdefault(image.shape[1:], path)
        arrays.append(image)
        labels.append(label)
    _report_skipped(root, unreadable, "unreadable image(s)", strict)
    if not arrays:
        raise DataError(f"{root}: no readable images")
    if len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DataError(f"{root}: images have mixed sizes ({s1[1]}x{s1[0]} in {p1.name}, {s2[1]}x{s2[0]} in "
                        f"{p2.name}); pass an image size (--image-size N) to resize them")
    (height, width), = sizes
    if height != width:
        raise DataError(f"{root}: images are {width}x{height}, not square; pass --image-size N to crop them")
    images = torch.from_numpy(np.stack(arrays))
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    present = set(labels)
    empty = [classes[i] for i in range(len(classes)) if i not in present]
    if empty:
        raise DataError(f"{root / empty[0]}: class folder has no readable images")
    if cache_file is not None:
        atomic_torch_save({"images": images, "labels": label_tensor, "classes": classes}, cache_file)
    return ImageArrays(images, label_tensor, classes, root.name, _augment_for(width))


def _augment_for(size: int) -> AugmentDefaults:
    return AugmentDefaults(pad=max(1, size // 8), flip=True)

