"""Named recipes: starting values for ``TrainConfig`` (every one overridable).

``paper``: the CIFAR protocol of paper Sec. 4.2, counted in iterations as the paper does.
``fast``: a modern one-cycle recipe for far fewer epochs; its evidence is in docs/results.md.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError


def _paper(model: str) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, no_decay_bn_bias=False,
        label_smoothing=0.0, batch_size=128, iterations=64_000, epochs=None, schedule="multistep",
        milestones=[0.5, 0.75], gamma=0.1, warmup_iterations=0, warmup_fraction=0.0, warmup_until_error=None,
        warmup_lr=0.01, normalize="pixel",
    )
    match = re.fullmatch(r"(resnet|plain)(\d+)", model)
    if match and int(match.group(2)) in (110, 1202):
        # Sec. 4.2: "0.01 to warm up the training until the training error is below 80%".
        values["warmup_until_error"] = 0.8
    return values


def _fast(model: str) -> dict[str, Any]:
    return dict(
        optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, no_decay_bn_bias=True,
        label_smoothing=0.1, batch_size=128, iterations=None, epochs=40, schedule="onecycle",
        warmup_iterations=0, warmup_fraction=0.15, warmup_start_factor=0.1, warmup_until_error=None, normalize="channel",
    )


RECIPES = {"paper": _paper, "fast": _fast}


def recipe_values(name: str, model: str) -> dict[str, Any]:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name](model)
