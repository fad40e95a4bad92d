"""Batches as index slices of a seeded permutation, over images held on the training device.

Every batch is a pure function of ``(seed, epoch, batch index)``: its indices come from the
epoch's permutation and its augmentation from a generator seeded for that batch alone. So a run
that stops mid-epoch resumes with exactly the batches it would have seen, and several processes
can share one epoch without talking to each other.

Sharding (``rank``, ``world_size``): ``batch_size`` is the *global* batch (the trainer checks that
it splits evenly). Each process takes the strided slice ``batch[rank::world_size]`` of every global
batch, augmented identically to the single-process run, so N processes together see exactly what one
process would.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

from ..errors import DataError
from .arrays import AugmentDefaults, ImageArrays
from .augment import Normalizer, crop_flip, cutout, preprocess_eval


def _batch_seed(seed: int, epoch: int, index: int) -> int:
    # Taken modulo 2**64, as torch's generators take any seed (a negative one wraps): a large run seed
    # (a timestamp, say) would otherwise overflow them, while every seed that fit before keeps its batches.
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % 2**64


class Batch(NamedTuple):
    """One training batch as this process sees it; every loader yields this one shape."""

    images: torch.Tensor  # normalised and augmented, N x C x H x W
    labels: torch.Tensor
    rows: torch.Tensor  # each example's row in the dataset (per-image targets, e.g. a cached teacher's logits)
    # The same images under the same crops, flips and cutout, normalised with a second set of statistics
    # (a distillation teacher's); ``images`` itself when the loader was given none.
    teacher_images: torch.Tensor

    def part(self, index: int, parts: int) -> "Batch":
        """Micro-batch ``index`` of ``parts``: every ``parts``-th example (strided, as processes split)."""
        if parts == 1:
            return self
        return Batch(*(t[index::parts] for t in self))


class TrainLoader:
    """Shuffled, augmented, normalised training batches; the last partial batch is dropped."""

    def __init__(self, data: ImageArrays, batch_size: int, normalizer: Normalizer, *,
                 augment: AugmentDefaults | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1, cutout_size: int = 0,
                 teacher_normalizer: Normalizer | None = None):
        if len(data) < batch_size:
            raise DataError(f"{data.name} has {len(data)} images, fewer than one batch of {batch_size}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.normalizer = normalizer.to(self.device)
        self.teacher_normalizer = None if teacher_normalizer is None else teacher_normalizer.to(self.device)
        self.augment = augment if augment is not None else data.augment
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.cutout_size = cutout_size  # 0: no cutout

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_batch_seed(self.seed, epoch, -1))
        return torch.randperm(len(self.images), generator=g).to(self.device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch index ``start`` on."""
        order = self.permutation(epoch)
        mine = slice(self.rank, None, self.world_size)
        for index in range(start, len(self)):
            idx = order[index * self.batch_size:(index + 1) * self.batch_size]
            images, seed = self.images[idx], _batch_seed(self.seed, epoch, index)
            x = self._augmented(images, self.normalizer, seed)
            x_teacher = x if self.teacher_normalizer is None else self._augmented(images, self.teacher_normalizer, seed)
            yield Batch(x, self.labels[idx][mine], idx[mine], x_teacher)

    def _augmented(self, images: torch.Tensor, normalizer: Normalizer, seed: int) -> torch.Tensor:
        """This process's slice of the normalised, augmented batch; the augmentation depends on ``seed`` alone."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = crop_flip(normalizer(images), self.augment.pad, self.augment.flip, g)
        if self.cutout_size:  # drawn after crop/flip, so runs without cutout see the batches they always did
            x = cutout(x, self.cutout_size, g)
        return x[self.rank::self.world_size]


class EvalLoader:
    """Every example exactly once, in order, unaugmented. With several processes each takes the
    examples ``rank::world_size`` (no padding, so an uneven tail is not counted twice)."""

    def __init__(self, data: ImageArrays, batch_size: int, normalizer: Normalizer, *,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1):
        self.device = torch.device(device)
        self.indices = torch.arange(rank, len(data), world_size)
        self.images = data.images[self.indices].to(self.device)
        self.labels = data.labels[self.indices].to(self.device)
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.num_examples = len(data)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.images), self.batch_size):
            x = preprocess_eval(self.images[start:start + self.batch_size], self.normalizer)
            yield x, self.labels[start:start + self.batch_size]
