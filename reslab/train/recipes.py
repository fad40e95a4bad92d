"""Named recipes: what each changes from ``TrainConfig``'s defaults (every value overridable).

``paper``: the CIFAR protocol of paper Sec. 4.2, counted in iterations as the paper does; it is
``TrainConfig``'s defaults, plus the warm-up the paper gives its deepest networks.
``fast``: a modern one-cycle recipe for far fewer epochs; its evidence is in docs/results.md.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..models.resnet import NetSpec

# Sec. 4.2 on ResNet-110: "we use 0.01 to warm up the training until the training error is below 80%
# (about 400 iterations), and then go back to 0.1"; ResNet-1202 is trained the same way. The CIFAR
# networks (three stages) of that depth or more get it; the ImageNet ones (four stages) never did.
PAPER_WARMUP_DEPTH = 110

FAST: dict[str, Any] = dict(
    lr=0.2, nesterov=True, weight_decay=5e-4, no_decay_bn_bias=True, label_smoothing=0.1, iterations=None,
    epochs=40, schedule="onecycle", warmup=0.15, normalize="channel",
)

RECIPES = ("paper", "fast")


def recipe_values(name: str, network: NetSpec | None = None) -> dict[str, Any]:
    """The recipe's settings for ``network`` (None: not known)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if name == "fast":
        return dict(FAST)
    deep_cifar = network is not None and len(network.stages) == 3 and network.depth >= PAPER_WARMUP_DEPTH
    return {"warmup_until_error": 0.8} if deep_cifar else {}
