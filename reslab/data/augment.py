"""Batched augmentation on whatever device the data lives on: no per-sample Python.

The paper's CIFAR augmentation (Sec. 4.2): pad 4 pixels on each side, take a random 32x32 crop,
flip horizontally at random. Crop and flip are one gather: each output pixel reads
``padded[n, oy[n] + i, ox[n] + (W - 1 - j if flip[n] else j)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DataError

NORMALIZATIONS = ("channel", "pixel")  # statistics measured on the training images

# Per-channel (mean, std) of RGB images in [0, 1] that weights trained elsewhere expect, by name.
# imagenet: the values torchvision documents for all its pretrained ImageNet classifiers (the ILSVRC-2012
# training set's statistics), hence what its layout's files were trained with.
# cifar: the CIFAR-10 training set's values as most CIFAR code copies them; measured by reslab on the 50k
# training images they are 0.4913/0.4821/0.4465 and 0.2452/0.2428/0.2606. Some CIFAR code uses other
# values (std 0.2023/0.1994/0.2010, or ImageNet's): a file's own code base says which.
PUBLISHED_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class Normalizer:
    """``(x / 255 - mean) / std``. ``mean`` is per channel (C,) or, for the paper's per-pixel mean
    subtraction, a whole image (C, H, W) with ``std`` all ones."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, images: torch.Tensor, mode: str = "channel") -> "Normalizer":
        """Statistics of uint8 (N, C, H, W) training images, accumulated in chunks to bound memory."""
        if mode not in NORMALIZATIONS:
            raise DataError(f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALIZATIONS)}")
        n, c = images.shape[:2]
        total = torch.zeros(images.shape[1:], dtype=torch.float64)
        total_sq = torch.zeros(images.shape[1:], dtype=torch.float64)
        for start in range(0, n, 4096):
            chunk = images[start:start + 4096].to(torch.float64).div_(255)
            total += chunk.sum(0)
            total_sq += chunk.square().sum(0)
        if mode == "pixel":
            return cls((total / n).float(), torch.ones(c))
        count = n * images.shape[2] * images.shape[3]
        mean = total.sum((1, 2)) / count
        var = total_sq.sum((1, 2)) / count - mean.square()
        return cls(mean.float(), var.clamp_min(1e-12).sqrt().float())

    @classmethod
    def published(cls, name: str, channels: int = 3) -> Normalizer:
        """The fixed statistics ``name`` (``PUBLISHED_STATISTICS``), for RGB images only."""
        if name not in PUBLISHED_STATISTICS:
            raise DataError(f"unknown published statistics {name!r}; choose one of {', '.join(PUBLISHED_STATISTICS)}")
        if channels != 3:
            raise DataError(f"{name}'s mean and std are for RGB images; these have {channels} channel(s)")
        mean, std = PUBLISHED_STATISTICS[name]
        return cls(torch.tensor(mean), torch.tensor(std))

    def fits(self, channels: int, image_size: int) -> bool:
        """Whether these statistics apply to (channels, image_size, image_size) images: a per-pixel mean
        is an image of one size."""
        if self.mean.dim() == 1:
            return self.mean.numel() == channels
        return tuple(self.mean.shape) == (channels, image_size, image_size)

    def to_dict(self) -> dict[str, list]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def to(self, device: str | torch.device) -> "Normalizer":
        return Normalizer(self.mean.to(device), self.std.to(device))

    def same_as(self, other: "Normalizer") -> bool:
        return (self.mean.shape == other.mean.shape and torch.equal(self.mean.cpu(), other.mean.cpu())
                and torch.equal(self.std.cpu(), other.std.cpu()))

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> "Normalizer":
        return cls(torch.tensor(data["mean"], dtype=torch.float32), torch.tensor(data["std"], dtype=torch.float32))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32."""
        mean = self.mean.to(images.device)
        std = self.std.to(images.device)
        if mean.dim() == 1:
            mean, std = mean[:, None, None], std[:, None, None]
        else:
            if mean.shape != images.shape[1:]:
                raise DataError(f"per-pixel mean is {tuple(mean.shape)}, images are {tuple(images.shape[1:])}")
            std = std[:, None, None]
        return (images.float().div_(255) - mean) / std


def crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random ``pad``-translation crops and horizontal flips of a whole (B, C, H, W) float batch.

    Padding is with zeros *after* normalisation, i.e. with the mean, as in the paper (mean
    subtracted, then padded). Returns a channels_last tensor (the layout fast CPU convs want).
    """
    b, _, h, w = x.shape
    device = x.device
    if pad == 0 and not flip:
        return x.contiguous(memory_format=torch.channels_last)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C) view
    oy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=device, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=device, generator=generator)
    cols = torch.arange(w, device=device).view(1, 1, w)
    if flip:
        flips = torch.rand(b, 1, 1, device=device, generator=generator) < 0.5
        cols = torch.where(flips, w - 1 - cols, cols)
    rows = oy + torch.arange(h, device=device).view(1, h, 1)
    batch = torch.arange(b, device=device).view(b, 1, 1)
    out = padded[batch, rows, ox + cols]  # (B, H, W, C), contiguous
    return out.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image, its centre anywhere in the image (the square is
    clipped at the borders), as in DeVries & Taylor 2017, "Improved Regularization of Convolutional
    Neural Networks with Cutout". Applied after normalisation, so zero is the dataset mean.

    A multiply by a (B, 1, H, W) mask keeps the batch's memory layout (channels_last)."""
    b, _, h, w = x.shape
    device = x.device
    cy = torch.randint(0, h, (b, 1, 1), device=device, generator=generator)
    cx = torch.randint(0, w, (b, 1, 1), device=device, generator=generator)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def preprocess_eval(images: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
    return normalizer(images).contiguous(memory_format=torch.channels_last)
