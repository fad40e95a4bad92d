"""Reading image folders larger than memory: reslab's streaming paths vs the usual torchvision-style code.

Data: a folder of realistic JPEGs made from CIFAR-10's training images (the tarball of JPEGs), each
enlarged to a random shorter side in 256..480 px at a random aspect ratio in 3/4..4/3 and saved at JPEG
quality 90 (the size and compression of typical photos after the usual ImageNet resize), 10 classes,
written once under /tmp. Two folder sizes (default 2,000 and 8,000 images) show whether memory grows with
the folder.

Pipelines, all producing normalised float batches of 224x224 crops with random flips, 2 worker processes:

- **baseline**: what people write with torchvision, written here with PIL (torchvision is not a reslab
  dependency): an ``ImageFolder``-style ``Dataset`` over (path, label) pairs whose ``__getitem__`` opens
  the file, converts to RGB, takes a RandomResizedCrop(224), flips, turns it into a float tensor
  (ToTensor) and normalises it (Normalize), behind a ``DataLoader`` that collates the float tensors.
- **reslab stream**: ``data_format: stream``, the same random-resized crops (reslab/data/stream.py).
- **reslab cache**: ``data_format: cache``, the same crops from the resized copy on disk (built once;
  the build's time is reported apart).
- **reslab stream, paper crops** and **cache, paper crops**: the imagenet-paper recipe's scale
  augmentation (shorter side 256..480, 224 crop) with PCA lighting.
- **reslab memory**: the folder decoded whole at 224 into one uint8 tensor (what reslab did before
  streaming), for its memory only.

Each pipeline runs in a fresh process (``--probe``); memory is the peak over the run of the summed
proportional set size (PSS: shared pages split between the processes that share them) of the process
and its workers, sampled every 50 ms. Also: ResNet-18 training steps at 224, batch 32, 2 threads, fed a
fixed batch and fed by each streaming pipeline (workers and the step then share the cores), to say
whether training would be data-bound here.

    python benchmarks/data_stream.py [--sizes 2000,8000] [--batches 20] [--steps 6]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json

TARBALL = Path("/work/shared/data/cifar10-train-jpeg.tar.gz")
WORK = Path("/tmp/reslab-stream-bench")
BATCH = 32
WORKERS = 2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- the folder -------------------------------------------------------------------------------------

def make_folder(n: int, tarball: Path = TARBALL) -> Path:
    """``n`` JPEGs (n/10 per class) at shorter side 256..480, quality 90, under WORK/n{n}."""
    root = WORK / f"n{n}"
    if (root / ".done").exists():
        return root
    rng = random.Random(n)
    per_class = n // 10
    taken: dict[str, int] = {}
    with tarfile.open(tarball) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            label = member.name.split("/")[-2]
            if taken.get(label, 0) >= per_class:
                continue
            taken[label] = taken.get(label, 0) + 1
            img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            shorter, aspect = rng.randint(256, 480), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            size = (round(shorter * aspect), shorter) if aspect >= 1 else (shorter, round(shorter / aspect))
            out = root / label / Path(member.name).name
            out.parent.mkdir(parents=True, exist_ok=True)
            img.resize(size, Image.BICUBIC).save(out, quality=90)
            if sum(taken.values()) >= per_class * 10:
                break
    (root / ".done").write_text("")
    return root


# ---- the baseline: ImageFolder + per-sample transforms ----------------------------------------------

class FolderDataset(torch.utils.data.Dataset):
    """torchvision.datasets.ImageFolder + transforms.Compose([RandomResizedCrop(224),
    RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)]), one image per call."""

    def __init__(self, root: Path):
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        left, top, w, h = self._random_resized_crop_params(img.size)
        img = img.resize((224, 224), Image.BILINEAR, box=(left, top, left + w, top + h))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)  # ToTensor
        x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)  # Normalize
        return x, label

    @staticmethod
    def _random_resized_crop_params(size: tuple[int, int]) -> tuple[int, int, int, int]:
        width, height = size
        area = width * height
        for _ in range(10):
            target = area * random.uniform(0.08, 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, width - w), random.randint(0, height - h), w, h
        return 0, 0, width, height


def baseline_batches(root: Path):
    loader = torch.utils.data.DataLoader(FolderDataset(root), batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         drop_last=True)
    while True:
        yield from (x for x, _ in loader)


# ---- reslab -----------------------------------------------------------------------------------------

def reslab_batches(root: Path, fmt: str, crop: str, data_root: Path):
    from reslab.data import Normalizer
    from reslab.train.config import resolve
    from reslab.train.rundata import load_run_data

    recipe = "imagenet-paper" if crop == "scale" else "imagenet-fast"
    config = resolve(recipe, None, {"data": str(root), "data_root": str(data_root), "data_format": fmt,
                                    "workers": WORKERS, "batch_size": BATCH, "eval_split": None,
                                    "schedule": "constant"})
    data = load_run_data(config, None, lambda line: None)
    normalizer = Normalizer(torch.tensor(MEAN), torch.tensor(STD))
    loader = data.train_loader(config, normalizer, "cpu", 0, 1, None)
    epoch = 0
    while True:
        yield from (batch.images for batch in loader.epoch(epoch))
        epoch += 1


def memory_load(root: Path, data_root: Path) -> None:
    from reslab.data import DataOptions, load_dataset

    load_dataset(str(root), "trainval", DataOptions(root=str(data_root), image_size=224))


# ---- measuring --------------------------------------------------------------------------------------

def pss_bytes(pid: int, kinds: tuple[str, ...] = ("Pss:",)) -> int:
    """The process's proportional set size (shared pages split among their sharers); with ``kinds``
    ("Pss_Anon:", "Pss_Shmem:") only those parts: memory of its own, not file pages it maps (the page
    cache the kernel may drop, as the disk cache's memory map is)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(kinds):
                    total += int(line.split()[1]) * 1024
    except OSError:
        pass
    return total


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class PeakMemory:
    """Peak of the summed PSS of this process and its descendants, sampled every 50 ms."""

    def __init__(self):
        self.peak, self.peak_own, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids, todo = [], [os.getpid()]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo += children(pid)
            self.peak = max(self.peak, sum(pss_bytes(p) for p in pids))
            self.peak_own = max(self.peak_own, sum(pss_bytes(p, ("Pss_Anon:", "Pss_Shmem:")) for p in pids))
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def time_batches(batches, count: int) -> float:
    """Images per second over ``count`` batches, after 2 warm-up batches (worker start-up not counted)."""
    next(batches), next(batches)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * BATCH / (time.perf_counter() - start)


def train_steps(batches, steps: int) -> float:
    """ResNet-18 training images/s at 224, batch 32, fed by ``batches`` (None: one fixed batch)."""
    import reslab

    torch.manual_seed(0)
    model = reslab.create_model("resnet18", num_classes=10).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    fixed = torch.randn(BATCH, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        x = fixed if batches is None else next(batches)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def probe(name: str, n: int, batches_count: int, steps: int) -> dict:
    torch.set_num_threads(2)
    root = make_folder(n)
    data_root = WORK / "data"
    result: dict = {"pipeline": name, "images": n}
    if name.startswith("cache"):  # build (or find) the cache first, its time and memory apart
        with PeakMemory() as mem:
            start = time.perf_counter()
            fmt_crop = name.split(":")[1]
            next(reslab_batches(root, "cache", fmt_crop, data_root))
            result["cache_build_s"] = time.perf_counter() - start
        result["cache_build_peak_mb"] = mem.peak / 2**20
    with PeakMemory() as mem:
        if name == "memory":
            start = time.perf_counter()
            memory_load(root, data_root)
            result["load_s"] = time.perf_counter() - start
        else:
            kind, _, crop = name.partition(":")
            batches = baseline_batches(root) if kind == "baseline" else reslab_batches(root, kind, crop, data_root)
            result["images_per_s"] = time_batches(batches, batches_count)
            if steps:
                result["train_images_per_s"] = train_steps(batches, steps)
    result["peak_mb"] = mem.peak / 2**20
    result["peak_own_mb"] = mem.peak_own / 2**20
    return result


def run_probe(name: str, n: int, batches_count: int, steps: int) -> dict:
    command = [sys.executable, __file__, "--probe", name, str(n), "--batches", str(batches_count), "--steps", str(steps)]
    out = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise SystemExit(f"probe {name} {n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,8000")
    parser.add_argument("--batches", type=int, default=15, help="timed batches of 32 per pipeline and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the pipelines alternate within each")
    parser.add_argument("--steps", type=int, default=3, help="timed ResNet-18 steps per fed pipeline (0: none)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_stream.json"))
    parser.add_argument("--probe", nargs=2, metavar=("PIPELINE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe[0], int(args.probe[1]), args.batches, args.steps)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        make_folder(n)
    pipelines = ["baseline", "stream:random-resized", "cache:random-resized", "stream:scale", "cache:scale"]
    runs: dict[tuple[str, int], list[dict]] = {}
    for n in sizes:  # the memory path: how long it takes to load and what it holds
        runs[("memory", n)] = [run_probe("memory", n, args.batches, 0)]
        print(json.dumps(runs[("memory", n)][0]), flush=True)
    for round_ in range(args.repeats):  # alternate, so the machine's drift affects every pipeline alike
        for n in sizes:
            for name in pipelines:
                row = run_probe(name, n, args.batches, 0)
                runs.setdefault((name, n), []).append(row)
                print(json.dumps({"round": round_, **row}), flush=True)
    fed = {}
    if args.steps:  # ResNet-18 training fed by each pipeline at the largest size, and fed a fixed batch
        for name in ("baseline", "stream:random-resized", "cache:random-resized"):
            fed[name] = run_probe(name, sizes[-1], 2, args.steps)["train_images_per_s"]
            print(name, "fed training:", fed[name], flush=True)
        torch.set_num_threads(2)
        fed["fixed batch"] = train_steps(None, args.steps)
    rows = []
    for (name, n), found in runs.items():
        rates = [r["images_per_s"] for r in found if "images_per_s" in r]
        row = {"pipeline": name, "images": n, "peak_mb": max(r["peak_mb"] for r in found),
               "peak_own_mb": max(r.get("peak_own_mb", 0) for r in found)}
        if rates:
            row.update(images_per_s=statistics.median(rates), images_per_s_runs=rates)
        for key in ("cache_build_s", "cache_build_peak_mb", "load_s"):
            if key in found[0]:
                row[key] = found[0][key]
        rows.append(row)
    result = {"benchmark": "data_stream", "batch_size": BATCH, "workers": WORKERS, "batches_timed": args.batches,
              "repeats": args.repeats, "torch_threads": 2,
              "machine": {**machine(), "note": "2-core AMD EPYC (AVX2), shared with other jobs while measured"},
              "folder": "CIFAR-10 training JPEGs enlarged to shorter side 256..480, aspect 3/4..4/3, quality 90",
              "resnet18_train_images_per_s": fed, "rows": rows}
    write_json(result, Path(args.out))
    print(f"{'pipeline':<24}{'images':>8}{'img/s':>9}{'peak MB':>9}")
    for row in rows:
        print(f"{row['pipeline']:<24}{row['images']:>8}{row.get('images_per_s', float('nan')):>9.1f}{row['peak_mb']:>9.0f}")
    for name, rate in fed.items():
        print(f"ResNet-18 training at 224, batch {BATCH}, 2 threads, fed by {name}: {rate:.2f} img/s")


if __name__ == "__main__":
    main()
