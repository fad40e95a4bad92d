"""The run's data, in the form its config and size call for: held in memory (reslab/data/loader.py), or
read from the folder as training goes (reslab/data/stream.py), from the files themselves or from a
resized copy on disk (reslab/data/diskcache.py).

``data_format: auto`` chooses: in memory when the crop allows it (``pad``, the datasets' own) and the
decoded images fit in half the memory available; otherwise the disk cache when it fits in half the free
disk, else the files. Measured on a 2-core AVX2 EPYC (docs/performance.md), the cache reads crops
several times faster than decoding JPEGs, so it is preferred where there is room for it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import (
    DataOptions,
    EvalLoader,
    Normalizer,
    TrainLoader,
    data_root,
    load_dataset,
)
from ..data.arrays import AugmentDefaults, ImageArrays, stratified_split
from ..data.crops import CropSpec
from ..data.diskcache import estimate_bytes, open_cache
from ..data.files import ImageFiles, folder_split, is_image_folder
from ..data.stream import (
    FileImages,
    ImageReader,
    StreamEvalLoader,
    StreamTrainLoader,
    fit_normalizer,
)
from ..errors import ConfigError
from .config import TrainConfig

MEMORY_SHARE = 0.5  # of the memory available now: the most a dataset held in memory may take
DISK_SHARE = 0.5  # of the free disk: the most the resized cache may take


@dataclass
class RunData:
    """The training and evaluation data, and how they are read: ``train``/``evaluation`` are
    ``ImageArrays`` in memory, else the readers of their files (``.files`` describes them)."""

    format: str  # memory | stream | cache
    train: ImageArrays | ImageReader
    evaluation: ImageArrays | ImageReader | None
    spec: CropSpec | None  # the training crops (stream and cache)
    workers: int | None = None  # stream and cache: decoding processes (None: one per core, at most 8)

    @property
    def description(self) -> ImageArrays | ImageFiles:
        """What the rest of the run reads: classes, channels, image size, name, length."""
        return self.train if isinstance(self.train, ImageArrays) else self.train.files

    def normalizer(self, mode: str) -> Normalizer:
        if isinstance(self.train, ImageArrays):
            return Normalizer.fit(self.train.images, mode)
        return fit_normalizer(self.train, self.spec, mode, workers=self.workers)

    def train_loader(self, config: TrainConfig, normalizer: Normalizer, device, rank: int, world_size: int,
                     teacher_normalizer: Normalizer | None) -> TrainLoader | StreamTrainLoader:
        if isinstance(self.train, ImageArrays):
            return TrainLoader(self.train, config.batch_size, normalizer,
                               augment=None if config.augment else AugmentDefaults(pad=0, flip=False), seed=config.seed,
                               device=device, rank=rank, world_size=world_size, cutout_size=config.cutout,
                               teacher_normalizer=teacher_normalizer)
        return StreamTrainLoader(self.train, config.batch_size, normalizer, self.spec, seed=config.seed, device=device,
                                 rank=rank, world_size=world_size, workers=config.workers,
                                 teacher_normalizer=teacher_normalizer, strict=config.strict)

    def eval_loader(self, config: TrainConfig, normalizer: Normalizer, device, rank: int,
                    world_size: int) -> EvalLoader | StreamEvalLoader | None:
        if self.evaluation is None:
            return None
        if isinstance(self.evaluation, ImageArrays):
            return EvalLoader(self.evaluation, config.eval_batch_size, normalizer, device=device, rank=rank,
                              world_size=world_size)
        return StreamEvalLoader(self.evaluation, config.eval_batch_size, normalizer, self.spec, device=device,
                                rank=rank, world_size=world_size, workers=config.workers, strict=config.strict)


def load_run_data(config: TrainConfig, options: DataOptions, say: Callable[[str], None]) -> RunData:
    fmt = choose_format(config, say)
    if fmt == "memory":
        train = load_dataset(config.data, config.train_split, options)
        evaluation = load_dataset(config.data, config.eval_split, options) if config.eval_split else None
        return RunData("memory", train, evaluation, None)
    spec = crop_spec(config)
    train = _reader(config, config.train_split, fmt, spec, say)
    evaluation = _reader(config, config.eval_split, fmt, spec, say) if config.eval_split else None
    source = (f"from the resized copy at shorter side <= {cache_side(config)} px" if fmt == "cache" else
              "decoded from the files")
    workers = _workers(config)
    by = f"by {workers} worker process{'es' if workers > 1 else ''}" if workers else "in the training process"
    say(f"{config.data}: images read as training goes, {source}, {by}; {spec.kind} crops of {spec.size} px")
    return RunData(fmt, train, evaluation, spec, config.workers)


def crop_spec(config: TrainConfig) -> CropSpec:
    size = config.image_size
    resize = size if config.crop == "pad" else (config.eval_resize or round(size * 8 / 7))
    kind = config.crop if config.augment else "center"
    pad = max(1, size // 8) if kind == "pad" else 0  # as reslab.data.folder gives folders held in memory
    return CropSpec(kind, size, resize, tuple(config.scale_range), flip=config.augment, pad=pad,
                    lighting=config.lighting if config.augment else 0.0, cutout=config.cutout)


def choose_format(config: TrainConfig, say: Callable[[str], None]) -> str:
    if config.data_format in ("memory", "stream", "cache"):
        if config.data_format != "memory" and not is_image_folder(config.data):
            raise ConfigError(f"data_format {config.data_format} reads image folders (root/<class>/<image>); "
                              f"{config.data} is not one (data_format memory holds it)")
        if config.data_format != "memory" and config.image_size is None:
            raise ConfigError(f"data_format {config.data_format} needs the crops' side: --image-size N")
        return config.data_format
    if not is_image_folder(config.data):
        if config.crop != "pad":
            raise ConfigError(f"crop {config.crop} reads images at full size from an image folder "
                              f"(root/<class>/<image>); {config.data} is not one")
        return "memory"
    files = folder_split(Path(config.data), "trainval" if config.train_split == "trainval" else "train",
                         config.channels, config.image_size or 1, config.val_fraction, strict=False)
    if config.crop == "pad":
        side = config.image_size
        decoded = (len(files) * files.channels * side * side if side else estimate_bytes(files, 1 << 30))
        available = _available_memory()
        if available is None or decoded <= MEMORY_SHARE * available:
            return "memory"
        if side is None:
            raise ConfigError(f"{config.data}: decoded, its {len(files):,} images take about {decoded / 2**30:.1f} GiB, "
                              f"more than half the {available / 2**30:.1f} GiB of memory available; give --image-size N "
                              "to read them from disk as training goes")
        say(f"{config.data}: about {decoded / 2**30:.1f} GiB decoded, more than half the memory available: "
            "reading it from disk as training goes")
    cache_dir = data_root(config.data_root) / "folder-cache"
    needed = estimate_bytes(files, cache_side(config))
    free = _free_disk(cache_dir)
    if needed <= DISK_SHARE * free:
        return "cache"
    say(f"data_format auto: the resized cache would take about {needed / 2**30:.1f} GiB of the "
        f"{free / 2**30:.1f} GiB free at {cache_dir}; decoding the files instead")
    return "stream"


def cache_side(config: TrainConfig) -> int:
    """The shorter side the cache stores: the largest the crops read (never more than the files hold)."""
    if config.cache_size:
        return config.cache_size
    size = config.image_size
    resize = config.eval_resize or round(size * 8 / 7)
    if config.crop == "scale":
        return max(config.scale_range[1], resize)
    if config.crop == "random-resized":
        return resize
    return size


def _reader(config: TrainConfig, split: str, fmt: str, spec: CropSpec, say: Callable[[str], None]) -> ImageReader:
    source, size = Path(config.data), config.image_size
    if fmt == "stream":
        return FileImages(folder_split(source, split, config.channels, size, config.val_fraction, config.strict))
    cache_dir = data_root(config.data_root) / "folder-cache"
    presplit = (source / "train").is_dir() and (source / "val").is_dir()
    if presplit or split in ("test", "trainval"):
        files = folder_split(source, split, config.channels, size, config.val_fraction, config.strict)
        return open_cache(files, cache_side(config), cache_dir, _workers(config), config.strict, say)
    # One folder split by class: cache the whole of it, then split its readable images (as in memory).
    whole = folder_split(source, "trainval", config.channels, size, config.val_fraction, config.strict)
    cached = open_cache(whole, cache_side(config), cache_dir, _workers(config), config.strict, say)
    train, val = stratified_split(cached.files.labels, config.val_fraction)
    return cached.subset(train if split == "train" else val, f"{whole.name}-{split}")


def _workers(config: TrainConfig) -> int:
    from ..data.stream import default_workers

    return default_workers() if config.workers is None else config.workers


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _free_disk(folder: Path) -> int:
    existing = next((p for p in [folder, *folder.absolute().parents] if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free

