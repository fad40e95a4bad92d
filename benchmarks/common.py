"""Shared helpers for the benchmarks: data to measure on, timing, machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from reslab.data import DataOptions, ImageArrays, load_dataset


def cifar_or_synthetic(root: str | None, n: int = 45_000) -> tuple[ImageArrays, str]:
    """The CIFAR-10 45k training split when it is at hand, else random images of the same shape
    (the pipelines' costs do not depend on pixel values)."""
    try:
        data = load_dataset("cifar10", "train", DataOptions(root=root, download=False))
        return data, "CIFAR-10 train split (45k)"
    except Exception:  # noqa: BLE001 - any failure means: measure on synthetic data instead
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        return ImageArrays(images, labels, [str(i) for i in range(10)], "synthetic"), f"synthetic {n} images"


def median_time(fn: Callable[[], None], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
