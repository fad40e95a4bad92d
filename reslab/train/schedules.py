"""Learning rate as a pure function of the step.

``Schedule(step, warming_up=False)`` gives the rate for optimizer step ``step`` (0-based).
``warming_up`` is the paper's ResNet-110 warm-up (Sec. 4.2): while the training error is still
above the threshold the loop passes True and gets ``warmup_lr``; the loop decides when it ends.

``PlateauSchedule`` (the paper's ImageNet rule, Sec. 3.4: divide by 10 "when the error plateaus") is
a pure function of the step and of the run's history of evaluation errors, which every checkpoint
carries: a resumed run is at the rate it left, with no scheduler state to save.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Sequence


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
        early = _warm_up(self, step, warming_up)
        if early is not None:
            return early
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


@dataclass(frozen=True)
class PlateauSchedule:
    lr: float
    history: list[dict[str, Any]]  # the run's metric rows (RunState.history), read as they are appended
    gamma: float = 0.1
    patience: int = 5
    threshold: float = 0.001
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    warmup_lr: float = 0.01

    def __call__(self, step: int, warming_up: bool = False) -> float:
        early = _warm_up(self, step, warming_up)
        if early is not None:
            return early
        return self.lr * self.gamma ** plateaus(self.history, self.patience, self.threshold)


def _warm_up(schedule: Schedule | PlateauSchedule, step: int, warming_up: bool) -> float | None:
    """The rate while the run warms up, either way (the paper's constant ``warmup_lr`` until the error
    drops, or a linear ramp over ``warmup_steps``); None once it has."""
    if warming_up:
        return schedule.warmup_lr
    if schedule.warmup_steps and step < schedule.warmup_steps:
        start = schedule.lr * schedule.warmup_start_factor
        return start + (schedule.lr - start) * step / schedule.warmup_steps
    return None


def plateaus(history: Sequence[dict[str, Any]], patience: int, threshold: float) -> int:
    """How many times the evaluation error has stalled: ``patience`` evaluations in a row without beating
    the best so far by ``threshold``. After each stall the count starts again (the best is kept)."""
    drops, best, waited = 0, None, 0
    for row in history:
        error = row.get("eval_error")
        if error is None:
            continue
        if best is None or error < best - threshold:
            best, waited = error, 0
            continue
        best = min(best, error)
        waited += 1
        if waited >= patience:
            drops, waited = drops + 1, 0
    return drops


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


def schedule_for(config, total_steps: int, history: list[dict[str, Any]] | None = None) -> Schedule | PlateauSchedule:
    warmup = warmup_steps(config.warmup, total_steps)
    if config.schedule == "plateau":
        return PlateauSchedule(config.lr, history if history is not None else [], config.gamma,
                               config.plateau_patience, config.plateau_threshold, warmup,
                               config.warmup_start_factor, config.warmup_lr)
    return Schedule(config.schedule, config.lr, total_steps, milestone_steps(config.milestones, total_steps),
                    config.gamma, warmup, config.warmup_start_factor, config.warmup_lr)
