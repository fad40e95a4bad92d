"""Learning rate as a pure function of the step.

``Schedule(step, warming_up=False)`` gives the rate for optimizer step ``step`` (0-based).
``warming_up`` is the paper's ResNet-110 warm-up (Sec. 4.2): while the training error is still
above the threshold the loop passes True and gets ``warmup_lr``; the loop decides when it ends.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Schedule:
    kind: str  # multistep | onecycle | cosine | constant
    lr: float
    total_steps: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    warmup_lr: float = 0.01

    def __call__(self, step: int, warming_up: bool = False) -> float:
        if warming_up:
            return self.warmup_lr
        if self.warmup_steps and step < self.warmup_steps:
            start = self.lr * self.warmup_start_factor
            return start + (self.lr - start) * step / self.warmup_steps
        if self.kind == "multistep":
            # The paper divides by 10 *at* 32k and 48k: step 32000 already runs at 0.01.
            return self.lr * self.gamma ** bisect.bisect_right(self.milestones, step)
        if self.kind == "constant":
            return self.lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "onecycle":
            return self.lr * (1.0 - progress)
        if self.kind == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown schedule {self.kind!r}")


def milestones_are_fractions(milestones: Sequence[float]) -> bool:
    """Milestones all below 1 are fractions of the run; otherwise they are step numbers."""
    return bool(milestones) and all(m < 1 for m in milestones)


def milestone_steps(milestones: Sequence[float], total_steps: int) -> tuple[int, ...]:
    """Milestones in steps: fractions of the run scaled by ``total_steps`` (and kept inside the run,
    so a tiny run still drops), else taken as steps."""
    if milestones_are_fractions(milestones):
        return tuple(min(max(1, round(m * total_steps)), max(1, total_steps - 1)) for m in milestones)
    return tuple(int(m) for m in milestones)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """The linear warm-up's length: ``warmup`` steps, or below 1 that fraction of the run."""
    return round(warmup * total_steps) if warmup < 1 else int(warmup)


def schedule_for(config, total_steps: int) -> Schedule:
    warmup = warmup_steps(config.warmup, total_steps)
    return Schedule(config.schedule, config.lr, total_steps, milestone_steps(config.milestones, total_steps),
                    config.gamma, warmup, config.warmup_start_factor, config.warmup_lr)
