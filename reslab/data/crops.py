"""Per-image crops for data read from files: where each training crop lies, drawn from a generator that
belongs to one image of one epoch, and the crop taken with one resize.

Every crop is a box in the source image's pixel coordinates resized to ``size`` x ``size``; Pillow's
``resize(box=...)`` does crop and resize in one pass. The kinds:

- ``scale`` (paper Sec. 3.4, after Simonyan & Zisserman 2015): the shorter side resized to a whole
  number of pixels drawn uniformly from ``scale_range`` (256..480), then a random ``size`` crop.
- ``random-resized`` (Szegedy et al. 2015, "Going deeper with convolutions"): a box of 8%-100% of the
  image's area with aspect ratio 3/4..4/3 (log-uniform), resized to ``size``.
- ``center`` (evaluation): the shorter side resized to ``resize``, the central ``size`` crop.
- ``pad`` (the CIFAR recipe on streamed folders): the ``center`` image at ``size``; the padded random
  crop itself is drawn here and applied to the normalised batch (reslab.data.augment.shift_flip).

A generator per (seed, epoch, dataset row) makes every crop a function of those three alone: the same
in any worker process, at any worker count, on any DDP rank, before and after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

CROP_KINDS = ("pad", "scale", "random-resized", "center")

# What each sample carries besides its pixels: PCA lighting weights (3), pad-crop offsets (2), the
# flip (applied to the pixels already, except for ``pad``), and the cutout centre (2).
EXTRAS = ("alpha_r", "alpha_g", "alpha_b", "pad_y", "pad_x", "flip", "cut_y", "cut_x")


@dataclass(frozen=True)
class CropSpec:
    kind: str = "center"
    size: int = 224  # output side
    resize: int = 256  # center/pad: the shorter side before the central crop (pad: equals size)
    scale_range: tuple[int, int] = (256, 480)  # scale: shorter side drawn from this range (inclusive)
    area_range: tuple[float, float] = (0.08, 1.0)  # random-resized: fraction of the image's area
    ratio_range: tuple[float, float] = (3 / 4, 4 / 3)  # random-resized: width / height
    flip: bool = False
    pad: int = 0  # pad: translation in pixels
    lighting: float = 0.0  # std of the PCA lighting weights (AlexNet: 0.1); 0: none
    cutout: int = 0  # side of the cutout square; 0: none

    def box(self, rng: np.random.Generator, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop's box (left, top, right, bottom) in the source's pixels, drawn with ``rng``."""
        if self.kind == "scale":
            shorter = int(rng.integers(self.scale_range[0], self.scale_range[1] + 1))
            return self._resized_crop(rng, width, height, shorter)
        if self.kind == "random-resized":
            return self._random_area_box(rng, width, height)
        return self._resized_crop(None, width, height, self.size if self.kind == "pad" else self.resize)

    def _resized_crop(self, rng: np.random.Generator | None, width: int, height: int,
                      shorter: int) -> tuple[float, float, float, float]:
        """A ``size`` crop of the image resized to ``shorter`` (random with ``rng``, else central), as a box
        in the source's pixels."""
        scale = shorter / min(width, height)
        w, h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
        if rng is None:
            left, top = (w - self.size) // 2, (h - self.size) // 2
        else:
            left, top = int(rng.integers(0, w - self.size + 1)), int(rng.integers(0, h - self.size + 1))
        sx, sy = width / w, height / h
        return left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy

    def _random_area_box(self, rng: np.random.Generator, width: int, height: int) -> tuple[float, float, float, float]:
        area = width * height
        low, high = math.log(self.ratio_range[0]), math.log(self.ratio_range[1])
        for _ in range(10):
            target = area * rng.uniform(*self.area_range)
            ratio = math.exp(rng.uniform(low, high))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        # Ten misses (a very long or tall image): the whole image, its ratio clipped to the range.
        ratio = min(max(width / height, self.ratio_range[0]), self.ratio_range[1])
        w, h = (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
        w, h = min(w, width), min(h, height)
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def extras(self, rng: np.random.Generator) -> np.ndarray:
        """The per-image numbers applied to the batch (see EXTRAS), drawn after the box."""
        out = np.zeros(len(EXTRAS), dtype=np.float32)
        out[5] = float(self.flip and rng.random() < 0.5)
        if self.lighting:
            out[0:3] = rng.normal(0.0, self.lighting, 3)
        if self.kind == "pad" and self.pad:
            out[3:5] = rng.integers(0, 2 * self.pad + 1, 2)
        if self.cutout:
            out[6:8] = rng.integers(0, self.size, 2)
        return out


def sample_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The generator of one image in one epoch (its crop, flip, lighting and cutout)."""
    return np.random.Generator(np.random.PCG64([seed % 2**63, epoch % 2**63, row]))


def reduced_decode(img: Image.Image, box: tuple[float, float, float, float], size: int
                   ) -> tuple[float, float, float, float]:
    """Ask a JPEG to decode at 1/2, 1/4 or 1/8 of its size when the crop is scaled down at least that
    much (libjpeg scales in the DCT, so it skips most of the work); the box, in the decoded pixels."""
    if img.format != "JPEG":
        return box
    factor = min((box[2] - box[0]) / size, (box[3] - box[1]) / size)
    if factor < 2:
        return box
    width, height = img.size
    result = img.draft(None, (max(1, math.ceil(width / factor)), max(1, math.ceil(height / factor))))
    if result is None:
        return box
    shrink = result[1][2] / width
    return tuple(v * shrink for v in box)


def crop_resized(img: Image.Image, box: tuple[float, float, float, float], size: int, flip: bool) -> np.ndarray:
    """(C, size, size) uint8: the box resized (bilinear), mirrored when ``flip``."""
    out = img.resize((size, size), Image.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(out, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def resize_shorter(img: Image.Image, shorter: int) -> Image.Image:
    """The whole image with its shorter side ``shorter`` pixels (evaluation at several scales)."""
    width, height = img.size
    scale = shorter / min(width, height)
    w, h = max(shorter, round(width * scale)), max(shorter, round(height * scale))
    return img if (w, h) == img.size else img.resize((w, h), Image.BILINEAR)
