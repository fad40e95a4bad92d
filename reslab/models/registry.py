"""Model names -> ``NetSpec``: ``create_model``, ``list_models`` and what is known about each preset."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import SpecError
from .presets import PREACT_CIFAR_BLOCKS, cifar_spec, family_prefix, imagenet_spec
from .resnet import NetSpec, ResNet
from .spec import check_size, read_spec_file, spec_from_mapping

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
# He et al. 2016 ("Identity Mappings in Deep Residual Networks"): its CIFAR networks, and on ImageNet the
# 2015 depths plus ResNet-200.
PREACT_CIFAR_DEPTHS = tuple(PREACT_CIFAR_BLOCKS)
PREACT_IMAGENET_DEPTHS = IMAGENET_DEPTHS + (200,)
SPEC_SUFFIXES = (".yaml", ".yml", ".json")

# Published errors (%), to print beside measured ones. CIFAR: Table 6, CIFAR-10 test error.
# ImageNet: Table 2, top-1 10-crop validation error. Plain CIFAR nets have curves only (Fig. 6).
PAPER_ERRORS: dict[str, tuple[float, str]] = {
    "resnet20": (8.75, "Table 6, CIFAR-10 test"),
    "resnet32": (7.51, "Table 6, CIFAR-10 test"),
    "resnet44": (7.17, "Table 6, CIFAR-10 test"),
    "resnet56": (6.97, "Table 6, CIFAR-10 test"),
    "resnet110": (6.43, "Table 6, CIFAR-10 test (best of 5; 6.61 +- 0.16)"),
    "resnet1202": (7.93, "Table 6, CIFAR-10 test"),
    "resnet18": (27.88, "Table 2, ImageNet top-1 10-crop"),
    "plain18": (27.94, "Table 2, ImageNet top-1 10-crop"),
    "resnet34": (25.03, "Table 2, ImageNet top-1 10-crop"),
    "plain34": (28.54, "Table 2, ImageNet top-1 10-crop"),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # "cifar" | "imagenet"
    depth: int
    residual: bool
    factory: Callable[..., NetSpec]
    paper_error: float | None
    paper_source: str | None
    preact: bool = False


def _preset_factory(make: Callable[..., NetSpec], depth: int, residual: bool,
                    defaults: dict[str, Any]) -> Callable[..., NetSpec]:
    """``make(depth, residual=...)`` with the preset's ``defaults``, which overrides may change (so a
    spec file may say ``model: resnet56`` and ``preact: true``); its signature lists the overrides."""

    def factory(**overrides: Any) -> NetSpec:
        return make(depth, residual=residual, **{**defaults, **overrides})

    factory.__signature__ = inspect.signature(make).replace(  # type: ignore[attr-defined]
        parameters=[p for p in inspect.signature(make).parameters.values() if p.name not in ("depth", "residual")]
    )
    return factory


def _presets():
    """(family, depth, factory, defaults) of each registered network, before its plain twin's."""
    for depth in CIFAR_DEPTHS:
        yield "cifar", depth, cifar_spec, {}
    for depth in IMAGENET_DEPTHS:
        yield "imagenet", depth, imagenet_spec, {}
    for depth, block in PREACT_CIFAR_BLOCKS.items():
        # The block is fixed here, so that preact164 with preact=False is the original ResNet-164.
        yield "cifar", depth, cifar_spec, {"preact": True, "block": block}
    for depth in PREACT_IMAGENET_DEPTHS:
        yield "imagenet", depth, imagenet_spec, {"preact": True}


def _register() -> dict[str, ModelInfo]:
    registry = {}
    for family, depth, make, defaults in _presets():
        for residual in (True, False):
            preact = defaults.get("preact", False)
            name = f"{family_prefix(residual, preact)}{depth}"
            error, source = PAPER_ERRORS.get(name, (None, None))
            registry[name] = ModelInfo(name, family, depth, residual, _preset_factory(make, depth, residual, defaults),
                                       error, source, preact)
    return registry


MODELS: dict[str, ModelInfo] = _register()
# Families that take any valid depth: create_model("resnet", depth=74).
FAMILIES: dict[str, Callable[..., NetSpec]] = {
    "resnet": lambda depth=None, **kw: cifar_spec(depth, residual=True, **kw),
    "plain": lambda depth=None, **kw: cifar_spec(depth, residual=False, **kw),
    "resnet_imagenet": lambda depth=None, **kw: imagenet_spec(depth, residual=True, **kw),
    "plain_imagenet": lambda depth=None, **kw: imagenet_spec(depth, residual=False, **kw),
    "preact": lambda depth=None, **kw: cifar_spec(depth, residual=True, preact=True, **kw),
    "preact_plain": lambda depth=None, **kw: cifar_spec(depth, residual=False, preact=True, **kw),
    "preact_imagenet": lambda depth=None, **kw: imagenet_spec(depth, residual=True, preact=True, **kw),
    "preact_plain_imagenet": lambda depth=None, **kw: imagenet_spec(depth, residual=False, preact=True, **kw),
}


def list_models() -> list[str]:
    """Names accepted by ``create_model`` (besides the families and spec files)."""
    return list(MODELS)


def model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise SpecError(f"unknown model {name!r}; `reslab models` lists them")
    return MODELS[name]


def _call(factory: Callable[..., NetSpec], name: str, overrides: dict[str, Any]) -> NetSpec:
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            allowed = ", ".join(p for p in params if p not in ("depth", "residual"))
            raise SpecError(f"{name}: unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
    try:
        return factory(**overrides)
    except TypeError as exc:
        raise SpecError(f"{name}: {exc}") from None


def resolve_spec(model: str | Path | NetSpec, **overrides: Any) -> NetSpec:
    """The ``NetSpec`` for a preset name, a family plus ``depth``, a spec file, or a spec itself."""
    if isinstance(model, NetSpec):
        return _apply_spec_overrides(model, str(model.name), overrides)
    name = str(model)
    if name.lower().endswith(SPEC_SUFFIXES):
        return _apply_spec_overrides(_spec_file(name), name, overrides)
    if name in MODELS:
        return _call(MODELS[name].factory, name, overrides)
    if name in FAMILIES:
        if "depth" not in overrides:
            raise SpecError(f"model family {name!r} needs a depth, e.g. create_model({name!r}, depth=74)")
        return _call(FAMILIES[name], name, overrides)
    raise SpecError(f"unknown model {name!r}; `reslab models` lists them (or pass a .yaml/.json spec)")


def _spec_file(path: str) -> NetSpec:
    """A spec file: a preset with overrides (``model: resnet56``) or a network layer by layer."""
    data = read_spec_file(path)
    check_size(data, path)
    if "model" in data:
        overrides = {k: v for k, v in data.items() if k != "model"}
        try:
            return resolve_spec(str(data["model"]), **overrides)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None
    spec = spec_from_mapping(data, path)
    return spec if "name" in data else spec.with_overrides(name=Path(path).stem)


_SPEC_OVERRIDES = ("num_classes", "in_channels", "shortcut", "residual", "preact", "bottleneck_stride",
                   "zero_init_residual")


def _apply_spec_overrides(spec: NetSpec, name: str, overrides: dict[str, Any]) -> NetSpec:
    unknown = sorted(set(overrides) - set(_SPEC_OVERRIDES))
    if unknown:
        raise SpecError(f"{name}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(_SPEC_OVERRIDES)}")
    return spec.with_overrides(**overrides) if overrides else spec


def create_model(model: str | Path | NetSpec, *, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a network by preset name (``"resnet56"``, ``"plain20"``, ``"resnet50"``), by family
    (``"resnet", depth=74``), from a YAML/JSON spec file, or from a ``NetSpec``.

    Overrides: ``num_classes``, ``in_channels``, ``shortcut`` ("A"/"B"/"C"), ``zero_init_residual``,
    ``bottleneck_stride`` ("1x1" paper, "3x3" v1.5), ``preact`` (pre-activation blocks, He et al. 2016;
    their presets are ``"preact110"``, ``"preact164"``, ``"preact1001"``, ``"preact18"`` ... ``"preact200"``
    and ``"preact-plain..."`` twins) and, for CIFAR presets, ``widths`` and ``block`` ("basic" or
    "bottleneck").
    """
    if pretrained:
        from .pretrained import load_pretrained

        return load_pretrained(str(model), **overrides)
    return ResNet(resolve_spec(model, **overrides))
