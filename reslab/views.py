"""Testing on several views of each image, as the paper's ImageNet results do (Sec. 3.4, Tables 2-5).

- **10-crop** (Krizhevsky et al. 2012): the image's shorter side resized to ``resize`` (256 for a
  224 model), its four corner crops and its central crop at the model's input size, and the mirror
  image of each.
- **Fully convolutional, multi-scale** (after Simonyan & Zisserman 2015): the whole image, its shorter
  side resized to each of ``scales`` (the paper: 224, 256, 384, 480, 640); the network's global average
  pooling makes any size an input. With ``flip``, each scale's mirror image too.

The views' class probabilities (softmax scores) are averaged, as the paper averages scores; what comes
out is the log of that mean, so top-k and the cross-entropy read it as logits. The images come from the
files themselves (in worker processes), not from the fixed-size copy the in-memory datasets hold.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .data.augment import Normalizer
from .data.crops import resize_shorter
from .data.files import ImageFiles, as_mode
from .data.stream import UNREADABLE, FileImages, _Warner, default_workers
from .errors import ConfigError
from .train.evaluate import EvalResult, tally


def ten_crop_boxes(width: int, height: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the four corner crops and the central one, in that order."""
    return [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size),
            ((height - size) // 2, (width - size) // 2)]


class _Views(torch.utils.data.Dataset):
    """Row -> (a list of uint8 (C, H, W) views, the row, whether it was readable)."""

    def __init__(self, files: ImageFiles, crops: int, size: int, resize: int, scales: Sequence[int]):
        self.reader = FileImages(files)
        self.crops, self.size, self.resize, self.scales = crops, size, resize, tuple(scales)

    def __len__(self) -> int:
        return len(self.reader.files)

    def __getitem__(self, row: int) -> tuple[list[np.ndarray], int, bool]:
        try:
            with self.reader.open(row) as img:
                img = as_mode(img, self.reader.files.channels)
                if self.crops:
                    views = [_chw(resize_shorter(img, self.resize))]
                else:
                    views = [_chw(resize_shorter(img, s)) for s in self.scales]
        except UNREADABLE:
            return [], row, False
        if self.crops:
            whole = views[0]
            h, w = whole.shape[1:]
            boxes = ten_crop_boxes(w, h, self.size)
            views = [whole[:, t:t + self.size, x:x + self.size] for t, x in (boxes if self.crops == 10 else boxes[4:])]
        return [np.ascontiguousarray(v) for v in views], row, True


def _chw(img) -> np.ndarray:
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


@torch.inference_mode()
def view_scores(model: nn.Module, files: ImageFiles, normalizer: Normalizer, *, crops: int = 1,
                scales: Sequence[int] = (), flip: bool = False, resize: int | None = None, central: bool = False,
                batch_size: int = 25, workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(log of the mean class probabilities over each image's views, labels), a batch of images at a time.

    ``crops=10``: the 10-crop test at the model's input size (``files.image_size``) from the image
    resized to ``resize`` (default: 8/7 of the input size, 256 for 224). ``scales``: the multi-scale
    test. ``central``: the one central crop (as training evaluates). ``flip``: the mirror images too
    (scales and central)."""
    if crops not in (1, 10):
        raise ConfigError(f"crops must be 1 or 10, got {crops}")
    if [crops == 10, bool(scales), central].count(True) != 1:
        raise ConfigError("choose one test: 10 crops, a list of scales, or the central crop")
    if crops == 10 and flip:
        raise ConfigError("the 10-crop test has the mirror images already; drop the flip")
    size = files.image_size
    resize = resize or round(size * 8 / 7)
    if crops == 10 and resize < size:
        raise ConfigError(f"10 crops of {size} px need images resized to at least {size} px, not {resize}")
    model.eval()
    device = next(model.parameters()).device
    data = _Views(files, 10 if crops == 10 else (1 if central else 0), size, resize, scales)
    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=list,
                                         prefetch_factor=2 if workers else None)
    warner = _Warner(files)
    for items in loader:
        rows = torch.tensor([row for _, row, _ in items])
        ok = warner.readable(rows, torch.tensor([good for _, _, good in items]))
        kept = [views for (views, _, _), good in zip(items, ok.tolist()) if good]
        if not kept:
            continue
        if crops == 10 or central:
            stacked = torch.from_numpy(np.stack([v for views in kept for v in views])).to(device)
            mirrored = crops == 10 or flip
            # Mirrored before the mean is subtracted, as training mirrors its crops (a per-pixel mean need
            # not be symmetric).
            stacked = torch.cat([stacked, stacked.flip(3)]) if mirrored else stacked
            probs = model(normalizer(stacked).contiguous(memory_format=torch.channels_last)).float().softmax(1)
            mean = probs.view(2 if mirrored else 1, len(kept), len(kept[0]), -1).mean((0, 2))
        else:
            mean = torch.stack([_mean_over_scales(model, views, normalizer, flip, device) for views in kept])
        yield mean.clamp_min(1e-30).log(), files.labels[rows[ok]].to(device)


def _mean_over_scales(model: nn.Module, views: list[np.ndarray], normalizer: Normalizer, flip: bool,
                      device: torch.device) -> torch.Tensor:
    total = 0.0
    for view in views:
        image = torch.from_numpy(view)[None].to(device)
        image = torch.cat([image, image.flip(3)]) if flip else image
        x = normalizer.resized_to(*image.shape[2:])(image).contiguous(memory_format=torch.channels_last)
        total = total + model(x).float().softmax(1).sum(0)
    return total / (len(views) * (2 if flip else 1))


PAPER_SCALES = (224, 256, 384, 480, 640)


def evaluate_views(model: nn.Module, checkpoint, files: ImageFiles, *, crops: int = 1, scales: Sequence[int] = (),
                   flip: bool = False) -> tuple[EvalResult, str]:
    """The checkpoint's errors on ``files`` under one test (10 crops, scales, else the central crop as its
    run evaluated, with ``flip`` its mirror image too), and the test in words."""
    from .predict import check_tta

    check_tta(checkpoint, "flip" if crops == 10 or flip else "none")
    resize = eval_resize(checkpoint.config, checkpoint.input_size)
    central = crops == 1 and not scales
    scores = view_scores(model, files, checkpoint.normalizer, crops=crops, scales=scales, flip=flip, resize=resize,
                         central=central)
    if central:
        how = f"central {checkpoint.input_size} px crop of the image resized to {resize} px"
    elif crops == 10:
        how = f"10 crops of {checkpoint.input_size} px from {resize} px, probabilities averaged"
    else:
        how = f"whole image at shorter sides {','.join(map(str, scales))}, probabilities averaged"
    return tally(scores, len(checkpoint.classes)), how + (" with the mirror images" if flip else "")


def reads_files(config: dict) -> bool:
    """Whether a run with this (saved) config read its images from the files as it trained (stream or
    cache): then evaluating it reads the files too, never the whole folder into memory."""
    crop = config.get("crop", "pad")
    return config.get("data_format", "memory") in ("stream", "cache") or crop != "pad"


def eval_resize(config: dict, size: int) -> int:
    """The shorter side before the central crop, as the run evaluated: ``eval_resize``, else 8/7 of the
    input size (256 for 224); ``size`` itself for the datasets' own pad-crop."""
    if config.get("crop", "pad") == "pad":
        return size
    return int(config.get("eval_resize") or round(size * 8 / 7))


def checkpoint_files(checkpoint, data: str | None, split: str) -> ImageFiles:
    """The image files of the checkpoint's dataset (or ``data``, an image folder), checked against its classes."""
    from .data.files import folder_split, is_image_folder

    config = checkpoint.config
    source = data or config.get("data")
    if not source or not is_image_folder(str(source)):
        raise ConfigError(f"evaluating on whole images (10 crops, scales) reads an image folder (root/<class>/<image>); "
                          f"{source or 'no dataset recorded'} is not one: pass --data FOLDER")
    files = folder_split(source, split, checkpoint.spec.in_channels, checkpoint.input_size,
                         config.get("val_fraction", 0.1))
    if files.classes != checkpoint.classes:
        raise ConfigError(f"{checkpoint.path}: its {len(checkpoint.classes)} classes are not {files.name}'s "
                          f"({len(files.classes)}: {files.classes[0]!r}...)")
    return files
