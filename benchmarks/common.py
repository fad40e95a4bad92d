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


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions as ``lscpu`` lists them (AVX2, AVX-512, AMX): they decide
    whether bf16 is native, so every measurement carries them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx2")


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "cpu_flags": cpu_flags(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
