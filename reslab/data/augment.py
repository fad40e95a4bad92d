"""Batched augmentation on whatever device the data lives on: no per-sample Python.

The paper's CIFAR augmentation (Sec. 4.2): pad 4 pixels on each side, take a random 32x32 crop,
flip horizontally at random. Crop and flip are one gather: each output pixel reads
``padded[n, oy[n] + i, ox[n] + (W - 1 - j if flip[n] else j)]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

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
        return cls.fit_chunks((images[start:start + 4096] for start in range(0, len(images), 4096)), mode)

    @classmethod
    def fit_chunks(cls, chunks: Iterable[torch.Tensor], mode: str = "channel") -> "Normalizer":
        """``fit`` over uint8 (n, C, H, W) chunks of one image size, one chunk in memory at a time."""
        if mode not in NORMALIZATIONS:
            raise DataError(f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALIZATIONS)}")
        total = total_sq = None
        n = 0
        for images in chunks:
            chunk = images.to(torch.float64).div_(255)
            if total is None:
                total, total_sq = torch.zeros(chunk.shape[1:], dtype=torch.float64), torch.zeros(chunk.shape[1:], dtype=torch.float64)
            total += chunk.sum(0)
            total_sq += chunk.square().sum(0)
            n += len(chunk)
        if total is None or n == 0:
            raise DataError("no images to compute the normalisation from")
        c, h, w = total.shape
        if mode == "pixel":
            return cls((total / n).float(), torch.ones(c))
        count = n * h * w
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

    def resized_to(self, height: int, width: int) -> "Normalizer":
        """For inputs of another size: a per-pixel mean image resized (bilinear) to ``height`` x ``width``
        (evaluation at several scales); a per-channel normaliser as it is."""
        if self.mean.dim() == 1 or tuple(self.mean.shape[1:]) == (height, width):
            return self
        mean = F.interpolate(self.mean[None].float(), size=(height, width), mode="bilinear", align_corners=False)
        return Normalizer(mean[0], self.std)

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
    b, device = x.shape[0], x.device
    if pad == 0 and not flip:
        return x.contiguous(memory_format=torch.channels_last)
    oy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=device, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=device, generator=generator)
    flips = torch.rand(b, 1, 1, device=device, generator=generator) < 0.5 if flip else None
    return shift_flip(x, pad, oy, ox, flips)


def shift_flip(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor,
               flips: torch.Tensor | None) -> torch.Tensor:
    """``crop_flip`` with the offsets (B, 1, 1) in 0..2*pad and the flips (B, 1, 1 booleans, or None)
    given: one gather over the zero-padded batch, channels_last out."""
    b, _, h, w = x.shape
    device = x.device
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C) view
    cols = torch.arange(w, device=device).view(1, 1, w)
    if flips is not None:
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
    cy = torch.randint(0, h, (b, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (b, 1, 1), device=x.device, generator=generator)
    return cutout_at(x, size, cy, cx)


def cutout_at(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """``cutout`` with the squares' centres (B, 1, 1 rows and columns) given."""
    _, _, h, w = x.shape
    device = x.device
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x * (~inside).unsqueeze(1).to(x.dtype)


# Krizhevsky et al. 2012 (Sec. 4.1), "ImageNet Classification with Deep Convolutional Neural Networks":
# add to every pixel of an image sum_i alpha_i * lambda_i * p_i, with p_i, lambda_i the eigenvectors and
# eigenvalues of the 3x3 covariance of ImageNet's RGB pixel values and alpha_i ~ N(0, 0.1) drawn once per
# image. The numbers are the widely published ones for RGB in [0, 1], as in fb.resnet.torch's ImageNet
# pipeline (datasets/imagenet.lua), the reference reimplementation of the paper's ImageNet training;
# columns of IMAGENET_EIGENVECTORS are the eigenvectors, rows the R, G, B channels.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                         (-0.5808, -0.0045, -0.8140),
                         (-0.5836, -0.6948, 0.4203))


def lighting_shift(alphas: torch.Tensor) -> torch.Tensor:
    """(B, 3) per-image weights alpha -> (B, 3) RGB offsets (in [0, 1] pixel units) of PCA lighting."""
    eigenvectors = torch.tensor(IMAGENET_EIGENVECTORS, dtype=torch.float32, device=alphas.device)
    eigenvalues = torch.tensor(IMAGENET_EIGENVALUES, dtype=torch.float32, device=alphas.device)
    return (alphas * eigenvalues) @ eigenvectors.T


def preprocess_eval(images: torch.Tensor, normalizer: Normalizer) -> torch.Tensor:
    return normalizer(images).contiguous(memory_format=torch.channels_last)
