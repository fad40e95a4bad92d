"""Batches read from image files (or their resized cache on disk) as training goes, in worker processes:
memory bounded by a few batches in flight, whatever the folder's size.

The same contract as the in-memory loaders (reslab/data/loader.py): a batch is the index slice
``index * batch_size ...`` of the epoch's seeded permutation, each process takes the strided slice
``rank::world_size`` of it, and every image's crop, flip, lighting and cutout come from a generator of
(seed, epoch, row) alone (reslab/data/crops.py). So a run resumes mid-epoch exactly, N processes
together see what one would, and the worker count changes nothing but the speed.

Workers decode and crop (torch's DataLoader, one batch per task, in order); the trainer's process
normalises, adds the lighting noise, pads and cuts out the whole batch at once. An image that cannot
be read is left out of its batch and named once; the batch is one smaller.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..cores import usable_cores
from ..errors import DataError
from .arrays import AugmentDefaults
from .augment import Normalizer, cutout_at, lighting_shift, shift_flip
from .crops import EXTRAS, CropSpec, crop_resized, reduced_decode, sample_rng
from .files import ImageFiles, as_mode, open_image
from .loader import Batch, _batch_seed


class ImageReader(Protocol):
    files: ImageFiles

    def open(self, row: int) -> contextlib.AbstractContextManager[Image.Image]: ...


class FileImages:
    """Images read from their files (decoded on every read)."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def open(self, row: int) -> contextlib.AbstractContextManager[Image.Image]:
        return open_image(self.files.path(row))

    def subset(self, rows: torch.Tensor, name: str) -> FileImages:
        return FileImages(self.files.subset(rows, name))


def default_workers() -> int:
    """One worker process per core the trainer may use, at most 8."""
    return max(1, min(8, usable_cores()))


UNREADABLE = (DataError, UnidentifiedImageError, OSError, ValueError, SyntaxError)


class _Crops(torch.utils.data.Dataset):
    """Row -> (the crop, its EXTRAS, the row, whether it was readable), for one epoch."""

    def __init__(self, reader: ImageReader, spec: CropSpec, seed: int, epoch: int):
        self.reader, self.spec, self.seed, self.epoch = reader, spec, seed, epoch

    def __len__(self) -> int:
        return len(self.reader.files)

    def __getitem__(self, row: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
        spec, channels = self.spec, self.reader.files.channels
        rng = sample_rng(self.seed, self.epoch, row)
        try:
            with self.reader.open(row) as img:
                box = spec.box(rng, *img.size)
                box = reduced_decode(img, box, spec.size)
                extras = spec.extras(rng)
                image = crop_resized(as_mode(img, channels), box, spec.size, bool(extras[5]) and spec.kind != "pad")
        except UNREADABLE:
            return (np.zeros((channels, spec.size, spec.size), np.uint8), np.zeros(len(EXTRAS), np.float32),
                    row, False)
        return image, extras, row, True


def _collate(items: list[tuple[np.ndarray, np.ndarray, int, bool]]) -> tuple[torch.Tensor, ...]:
    images, extras, rows, ok = zip(*items)
    return (torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(extras)),
            torch.tensor(rows, dtype=torch.int64), torch.tensor(ok))


class _Slices:
    """The batches ``start..`` of an epoch as lists of this process's rows (a batch sampler)."""

    def __init__(self, order: torch.Tensor, batch_size: int, start: int, stop: int, rank: int, world_size: int):
        self.order, self.batch_size, self.start, self.stop = order, batch_size, start, stop
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for index in range(self.start, self.stop):
            rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
            yield rows[self.rank::self.world_size].tolist()


def _read_batches(reader: ImageReader, spec: CropSpec, seed: int, epoch: int, batches: Iterable[list[int]],
                  workers: int) -> Iterator[tuple[torch.Tensor, ...]]:
    loader = torch.utils.data.DataLoader(_Crops(reader, spec, seed, epoch), batch_sampler=batches,
                                         num_workers=workers, collate_fn=_collate,
                                         prefetch_factor=2 if workers else None)
    yield from loader


class _Warner:
    """Names each unreadable file once per loader (with ``strict``, stops at the first)."""

    def __init__(self, files: ImageFiles, strict: bool = False):
        self.files, self.strict, self.named = files, strict, set()

    def readable(self, rows: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        for row in rows[~ok].tolist():
            if self.strict:
                raise DataError(f"{self.files.path(row)}: unreadable image (--strict)")
            if row not in self.named:
                self.named.add(row)
                warnings.warn(f"{self.files.path(row)}: unreadable image, skipped", stacklevel=4)
        return ok


class StreamTrainLoader:
    """Shuffled, augmented, normalised training batches read from files; the last partial batch is
    dropped. The interface of reslab.data.TrainLoader (``epoch``, ``len``, ``augment``)."""

    def __init__(self, reader: ImageReader, batch_size: int, normalizer: Normalizer, spec: CropSpec, *,
                 seed: int = 0, device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 workers: int | None = None, teacher_normalizer: Normalizer | None = None, strict: bool = False):
        files = reader.files
        if len(files) < batch_size:
            raise DataError(f"{files.name} has {len(files)} images, fewer than one batch of {batch_size}")
        self.reader, self.files, self.spec = reader, files, spec
        self.device = torch.device(device)
        self.labels = files.labels
        self.batch_size = batch_size
        self.normalizer = normalizer.to(self.device)
        self.teacher_normalizer = None if teacher_normalizer is None else teacher_normalizer.to(self.device)
        self.augment = AugmentDefaults(pad=spec.pad, flip=spec.flip)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers = default_workers() if workers is None else workers
        self._warner = _Warner(files, strict)

    def __len__(self) -> int:
        return len(self.files) // self.batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_batch_seed(self.seed, epoch, -1))
        return torch.randperm(len(self.files), generator=g)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch index ``start`` on."""
        slices = _Slices(self.permutation(epoch), self.batch_size, start, len(self), self.rank, self.world_size)
        for images, extras, rows, ok in _read_batches(self.reader, self.spec, self.seed, epoch, slices, self.workers):
            keep = self._warner.readable(rows, ok)
            images, extras, rows = images[keep].to(self.device), extras[keep].to(self.device), rows[keep]
            x = augment_batch(images, extras, self.normalizer, self.spec)
            x_teacher = x if self.teacher_normalizer is None else augment_batch(images, extras, self.teacher_normalizer,
                                                                                self.spec)
            yield Batch(x, self.labels[rows].to(self.device), rows.to(self.device), x_teacher)


def augment_batch(images: torch.Tensor, extras: torch.Tensor, normalizer: Normalizer, spec: CropSpec) -> torch.Tensor:
    """Normalised float batch (channels_last) of uint8 crops, with the per-image lighting, pad-crop,
    flip (pad only: the others are flipped in the worker) and cutout their EXTRAS say.

    One float tensor, made once and changed in place: each float temporary of a 224 px batch is ~19 MB,
    and a few of them per batch were enough to double the trainer's memory (freed blocks that size stay
    with the process)."""
    mean, std = normalizer.mean.to(images.device), normalizer.std.to(images.device)
    if mean.dim() == 1:
        mean = mean[:, None, None]
    elif mean.shape != images.shape[1:]:
        raise DataError(f"per-pixel mean is {tuple(mean.shape)}, images are {tuple(images.shape[1:])}")
    x = images.contiguous(memory_format=torch.channels_last).float()
    x.div_(255).sub_(mean)
    if spec.lighting:  # in pixel units (0..1), before the division by the std
        x.add_(lighting_shift(extras[:, 0:3])[:, :, None, None])
    x.div_(std[:, None, None])
    if spec.kind == "pad":
        as_int = extras.long()[:, :, None, None]
        flips = extras[:, 5, None, None] > 0.5 if spec.flip else None
        x = shift_flip(x, spec.pad, as_int[:, 3, 0:1], as_int[:, 4, 0:1], flips)
    if spec.cutout:
        as_int = extras.long()[:, :, None, None]
        x = cutout_at(x, spec.cutout, as_int[:, 6, 0:1], as_int[:, 7, 0:1])
    return x


class StreamEvalLoader:
    """Every image once, in order, centre-cropped: (normalised images, labels) batches. With several
    processes each takes the images ``rank::world_size``. Unreadable images are left out and named."""

    def __init__(self, reader: ImageReader, batch_size: int, normalizer: Normalizer | None, spec: CropSpec, *,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1, workers: int | None = None,
                 strict: bool = False):
        self.reader, self.spec = reader, CropSpec("center", spec.size, spec.resize)
        self.device = torch.device(device)
        self.rows = torch.arange(rank, len(reader.files), world_size)
        self.labels = reader.files.labels
        self.batch_size, self.normalizer = batch_size, normalizer
        self.num_examples = len(reader.files)
        self.workers = default_workers() if workers is None else workers
        self._warner = _Warner(reader.files, strict)

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def uint8_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = [self.rows[s:s + self.batch_size].tolist() for s in range(0, len(self.rows), self.batch_size)]
        for images, _extras, rows, ok in _read_batches(self.reader, self.spec, 0, 0, batches, self.workers):
            keep = self._warner.readable(rows, ok)
            yield images[keep], self.labels[rows[keep]]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.uint8_batches():
            x = self.normalizer(images.to(self.device)).contiguous(memory_format=torch.channels_last)
            yield x, labels.to(self.device)


def fit_normalizer(reader: ImageReader, spec: CropSpec, mode: str, sample: int = 10_000,
                   workers: int | None = None) -> Normalizer:
    """Normalisation statistics of the centre crops of up to ``sample`` training images spread evenly
    over the set (the mean of 10,000 images is within a fraction of a grey level of the full set's)."""
    files = reader.files
    rows = torch.from_numpy(np.unique(np.linspace(0, len(files) - 1, min(sample, len(files))).round().astype(np.int64)))
    subset = reader.subset(rows, files.name)
    loader = StreamEvalLoader(subset, 256, None, spec, workers=workers)
    return Normalizer.fit_chunks((images for images, _ in loader.uint8_batches()), mode)


def cache_folder(data_root: Path) -> Path:
    return Path(data_root) / "folder-cache"
