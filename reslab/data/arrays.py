"""The in-memory form of every dataset: one uint8 image tensor, one label tensor, class names."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DataError


@dataclass(frozen=True)
class AugmentDefaults:
    """What augmentation suits a dataset: the paper's pad-4 crop + flip for CIFAR; no flip for digits."""

    pad: int = 4
    flip: bool = True


@dataclass
class ImageArrays:
    """``images``: (N, C, H, W) uint8; ``labels``: (N,) int64 in [0, len(classes))."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    augment: AugmentDefaults = field(default_factory=AugmentDefaults)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be an (N, C, H, W) uint8 tensor, got "
                            f"{tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but {self.labels.numel()} labels")
        self.labels = self.labels.to(torch.int64)
        if self.labels.numel():
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= len(self.classes):
                raise DataError(f"{self.name}: label index {high if high >= len(self.classes) else low} is out "
                                f"of range for {len(self.classes)} classes")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def subset(self, indices: torch.Tensor, name: str) -> "ImageArrays":
        return ImageArrays(self.images[indices], self.labels[indices], self.classes, name, self.augment)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def stratified_split(labels: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/val indices: for each class, its *last* ``val_fraction`` of images (in file order) are
    held out. Deterministic and balanced: CIFAR-10 at 0.1 gives 4,500/500 per class, 45k/5k in all
    (the protocol of paper Sec. 4.2)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        train.append(idx[: len(idx) - n_val])
        val.append(idx[len(idx) - n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values
