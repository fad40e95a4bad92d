"""A user's own images: ``root/<class name>/<image>``, decoded once and cached as a uint8 tensor.

The cache key covers every file's path, size and modification time plus the decode settings, so
adding, removing or editing an image (or asking for another size) decodes again.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..fileio import atomic_torch_save
from .arrays import AugmentDefaults, ImageArrays

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def list_class_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    """Class names (sorted folder names), (file, label) pairs, and files skipped for their suffix."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders inside (expected {root}/<class name>/<image files>)")
    items, skipped = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"{root / name}: class folder has no images")
        items += [(p, label) for p in images]
    return classes, items, skipped


def decode_image(path: Path, channels: int, image_size: int | None) -> np.ndarray:
    """(C, H, W) uint8. With ``image_size``: shorter side resized to it, then a centre crop."""
    with Image.open(path) as img:
        img.load()
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


def _cache_key(root: Path, items: list[tuple[Path, int]], channels: int, image_size: int | None) -> str:
    digest = hashlib.sha1(json.dumps([str(root.resolve()), channels, image_size]).encode())
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
    _report_skipped(root, skipped, "non-image file(s)", strict)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"folder-{_cache_key(root, items, channels, image_size)}.pt"
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
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
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

