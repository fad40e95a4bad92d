"""Cost of producing augmented CIFAR batches: reslab's batched pipeline vs the common per-sample one.

Baseline, written in the style of the popular CIFAR reimplementations: a ``Dataset`` whose
``__getitem__`` pads, crops, flips and normalises one image, behind a ``DataLoader`` with 2 worker
processes. reslab: the uint8 tensor in memory, one gather per batch (reslab.data.TrainLoader).
Both produce the same thing: normalised, pad-4-cropped, flipped float batches of 128.

Also times one ResNet-20 training step at batch 128, to put the data cost in proportion.

    python benchmarks/data_pipeline.py [--data-root DIR] [--batches 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baseline  # noqa: E402
from common import cifar_or_synthetic, machine, median_time, write_json  # noqa: E402

import reslab  # noqa: E402
from reslab.data import Normalizer, TrainLoader  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--batches", type=int, default=100, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_pipeline.json"))
    args = parser.parse_args()

    data, source = cifar_or_synthetic(args.data_root)
    norm = Normalizer.fit(data.images)
    batch = 128
    loader = TrainLoader(data, batch, norm, seed=0)
    per_sample = baseline.loader(data.images, data.labels, norm.mean, norm.std, batch, workers=2)

    def run_reslab() -> None:
        for i, _batch in enumerate(loader.epoch(0)):
            if i + 1 == args.batches:
                break

    baseline_iter = iter(per_sample)

    def run_baseline() -> None:
        nonlocal baseline_iter
        for i in range(args.batches):
            try:
                next(baseline_iter)
            except StopIteration:
                baseline_iter = iter(per_sample)
                next(baseline_iter)

    run_reslab(), run_baseline()  # warm-up: worker start-up is not counted against the baseline
    reslab_times, baseline_times = [], []
    for _ in range(args.repeats):  # alternate, so drift affects both alike
        reslab_times.append(median_time(run_reslab, 1)[0])
        baseline_times.append(median_time(run_baseline, 1)[0])
    reslab_s = sorted(reslab_times)[len(reslab_times) // 2] / args.batches
    baseline_s = sorted(baseline_times)[len(baseline_times) // 2] / args.batches

    model = reslab.create_model("resnet20").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    x, y = next(loader.epoch(1))[:2]

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    step_s, _ = median_time(step, 10)

    epoch_batches = len(data) // batch
    result = {
        "benchmark": "data_pipeline", "data": source, "batch_size": batch, "batches_timed": args.batches,
        "repeats": args.repeats, "machine": machine(),
        "reslab_s_per_batch": reslab_s, "baseline_s_per_batch": baseline_s,
        "speedup": baseline_s / reslab_s,
        "reslab_s_per_epoch": reslab_s * epoch_batches, "baseline_s_per_epoch": baseline_s * epoch_batches,
        "resnet20_train_step_s": step_s, "reslab_data_fraction_of_step": reslab_s / step_s,
        "baseline_data_fraction_of_step": baseline_s / step_s,
    }
    write_json(result, Path(args.out))
    print(f"data: {source}; batch {batch}; median of {args.repeats} passes of {args.batches} batches")
    print(f"{'pipeline':<32}{'ms/batch':>10}{'s/epoch':>10}{'% of R20 step':>15}")
    for name, s in (("reslab (batched, in memory)", reslab_s), ("per-sample Dataset + 2 workers", baseline_s)):
        print(f"{name:<32}{1000 * s:>10.2f}{s * epoch_batches:>10.1f}{100 * s / step_s:>14.1f}%")
    print(f"speed-up {baseline_s / reslab_s:.1f}x; ResNet-20 training step {1000 * step_s:.0f} ms")


if __name__ == "__main__":
    main()
