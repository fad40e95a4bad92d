"""What a distillation teacher costs: one ResNet-20 training step (batch 128, channels_last, bf16
autocast on CPU) with and without the bundled ResNet-56 as teacher, built as training builds it.
The two kinds of step alternate, after warm-up; medians are reported with their ratio.

    python benchmarks/distill_step.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reslab import create_model
from reslab.models.pretrained import pretrained_checkpoint
from reslab.data import Batch
from reslab.train.distill import Distillation, OnlineTeacher, load_teacher
from reslab.train.objective import CrossEntropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    student = create_model("resnet20").to(memory_format=torch.channels_last).train()
    teacher = load_teacher(["resnet56"], [pretrained_checkpoint("resnet56")], device, torch.channels_last)
    objectives = {True: Distillation(OnlineTeacher(teacher), 0.1, 0.9, 4.0), False: CrossEntropy(0.1)}  # as training
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    batch = Batch(x, y, torch.arange(128), x)

    def step(with_teacher: bool) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = student(x)
            loss = objectives[with_teacher](logits.float(), batch)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for _ in range(5):
        step(True), step(False)
    plain, taught = [], []
    for _ in range(args.steps):
        plain.append(step(False))
        taught.append(step(True))
    p, t = statistics.median(plain), statistics.median(taught)
    print(f"ResNet-20 step: {1000 * p:.0f} ms alone, {1000 * t:.0f} ms with a ResNet-56 teacher, "
          f"ratio {t / p:.2f} (median of {args.steps} each, alternating; torch {torch.__version__}, "
          f"{args.threads} threads)")


if __name__ == "__main__":
    main()
