"""Batches as index slices of a seeded permutation, over images held on the training device.

Every batch is a pure function of ``(seed, epoch, batch index)``: its indices come from the
epoch's permutation and its augmentation from a generator seeded for that batch alone. So a run
that stops mid-epoch resumes with exactly the batches it would have seen, and several processes
can share one epoch without talking to each other.

Sharding (``rank``, ``world_size``): ``batch_size`` is the *global* batch. Each process takes the
strided slice ``batch[rank::world_size]`` of every global batch, augmented identically to the
single-process run, so N processes together see exactly what one process would.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..errors import DataError
from .arrays import AugmentDefaults, ImageArrays
from .augment import Normalizer, crop_flip, cutout, preprocess_eval


def _batch_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_000_033 + index


class TrainLoader:
    """Shuffled, augmented, normalised training batches; the last partial batch is dropped."""

    def __init__(self, data: ImageArrays, batch_size: int, normalizer: Normalizer, *,
                 augment: AugmentDefaults | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1, cutout_size: int = 0):
        if batch_size < world_size or batch_size % world_size:
            raise DataError(f"global batch size {batch_size} must be a multiple of the {world_size} processes")
        if len(data) < batch_size:
            raise DataError(f"{data.name} has {len(data)} images, fewer than one batch of {batch_size}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.normalizer = normalizer.to(self.device)
        self.augment = augment if augment is not None else data.augment
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.cutout_size = cutout_size  # 0: no cutout

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_batch_seed(self.seed, epoch, -1))
        return torch.randperm(len(self.images), generator=g).to(self.device)

    def epoch(self, epoch: int, start: int = 0, second_normalizer: Normalizer | None = None,
              targets: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """The batches ``(x, y)`` of ``epoch`` from batch index ``start`` on.

        With ``second_normalizer``, ``(x, y, x2)``: ``x2`` is the same images under the same crops,
        flips and cutout, normalised with the other statistics (a distillation teacher's input).
        With ``targets`` (one row per training image, in the data's order), ``(x, y, t)``: ``t`` holds
        the rows of the batch's images (a cached teacher's logits)."""
        if second_normalizer is not None and targets is not None:
            raise ValueError("a batch carries either a second normalisation or per-image targets, not both")
        if targets is not None and len(targets) != len(self.images):
            raise ValueError(f"{len(targets)} target rows for {len(self.images)} training images")
        order = self.permutation(epoch)
        other = None if second_normalizer is None else second_normalizer.to(self.device)
        rows = None if targets is None else targets.to(self.device)
        for index in range(start, len(self)):
            idx = order[index * self.batch_size:(index + 1) * self.batch_size]
            images, seed = self.images[idx], _batch_seed(self.seed, epoch, index)
            mine = slice(self.rank, None, self.world_size)
            x, y = self._augmented(images, self.normalizer, seed), self.labels[idx][mine]
            if other is not None:
                yield x, y, self._augmented(images, other, seed)
            elif rows is not None:
                yield x, y, rows[idx][mine]
            else:
                yield x, y

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
