"""Named recipes: what each changes from ``TrainConfig``'s defaults (every value overridable).

``paper``: the CIFAR protocol of paper Sec. 4.2, counted in iterations as the paper does; it is
``TrainConfig``'s defaults, plus the warm-up the paper gives its deepest networks.
``fast``: a modern one-cycle recipe for far fewer epochs; its evidence is in docs/results.md.
``imagenet-paper``: the ImageNet protocol of paper Sec. 3.4, read from image folders as they train.
``imagenet-fast``: the usual modern ImageNet recipe, for most users' own large folders.
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

# Paper Sec. 3.4: "The image is resized with its shorter side randomly sampled in [256, 480] for scale
# augmentation. A 224x224 crop is randomly sampled from an image or its horizontal flip, with the per-pixel
# mean subtracted. The standard color augmentation in [21] is used. [...] We use SGD with a mini-batch
# size of 256. The learning rate starts from 0.1 and is divided by 10 when the error plateaus, and the
# models are trained for up to 60 x 10^4 iterations. We use a weight decay of 0.0001 and a momentum of
# 0.9." [21] is Krizhevsky et al. 2012: PCA lighting noise, std 0.1. "When the error plateaus" is read
# as 5 evaluations (epochs) without a 0.1-point gain in validation top-1 error (schedule plateau); the
# common fixed approximation, /10 at epochs 30, 60 and 90 of 120 (fb.resnet.torch's), is
# --set schedule=multistep --set milestones=[0.25,0.5,0.75].
IMAGENET_PAPER: dict[str, Any] = dict(
    crop="scale", scale_range=[256, 480], image_size=224, normalize="pixel", lighting=0.1, batch_size=256,
    lr=0.1, momentum=0.9, weight_decay=1e-4, iterations=600_000, schedule="plateau", gamma=0.1,
)

# The usual modern ImageNet recipe, as collected by He et al. 2019, "Bag of Tricks for Image
# Classification with Convolutional Neural Networks": random-resized crops (8%-100% of the area), flips,
# cosine decay after a linear warm-up, label smoothing 0.1, no weight decay on BN parameters and biases;
# lr 0.1 per 256 images. 40 epochs (a short budget, with the warm-up over its first 5%).
IMAGENET_FAST: dict[str, Any] = dict(
    crop="random-resized", image_size=224, normalize="channel", batch_size=256, lr=0.1, momentum=0.9,
    nesterov=True, weight_decay=1e-4, no_decay_bn_bias=True, label_smoothing=0.1, iterations=None, epochs=40,
    schedule="cosine", warmup=0.05,
)

RECIPES = ("paper", "fast", "imagenet-paper", "imagenet-fast")


def recipe_values(name: str, network: NetSpec | None = None) -> dict[str, Any]:
    """The recipe's settings for ``network`` (None: not known)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if name == "fast":
        return dict(FAST)
    if name == "imagenet-paper":
        return dict(IMAGENET_PAPER)
    if name == "imagenet-fast":
        return dict(IMAGENET_FAST)
    deep_cifar = network is not None and len(network.stages) == 3 and network.depth >= PAPER_WARMUP_DEPTH
    return {"warmup_until_error": 0.8} if deep_cifar else {}
