"""Networks written as YAML/JSON files in the builder's vocabulary.

Either a preset with overrides::

    model: resnet56
    shortcut: B

or a network layer by layer (each entry is one builder call; ``repeat`` repeats a block)::

    in_channels: 3
    num_classes: 10
    shortcut: B
    layers:
      - init_block: {filter: [7, 7], channels: 32}
      - max_pool: {kernel: 2, stride: 2}
      - residual_block: {filter: [3, 3], channels: 32, repeat: 6}
      - avg_pool: {}
      - fc: {}
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..fileio import read_yaml_mapping
from .builder import Builder
from .resnet import NetSpec

LAYER_CALLS = ("init_block", "max_pool", "avg_pool", "residual_block", "fc")
NETWORK_KEYS = ("in_channels", "num_classes", "shortcut", "residual", "bottleneck_stride",
                "zero_init_residual", "input_size", "name")


def read_spec_file(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, SpecError)


def spec_from_mapping(data: dict[str, Any], where: str = "spec") -> NetSpec:
    """The network a spec's ``layers`` describe (a spec naming a ``model`` preset is resolved by the
    registry, which knows the presets)."""
    unknown = sorted(set(data) - set(NETWORK_KEYS) - {"layers"})
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: model, layers, {', '.join(NETWORK_KEYS)}")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"{where}: needs 'model: NAME' or a non-empty 'layers:' list")
    try:
        builder = Builder(**{k: data[k] for k in NETWORK_KEYS if k in data})
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    for index, entry in enumerate(layers):
        label = f"{where}: layers[{index}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise SpecError(f"{label}: each layer is one mapping like '- residual_block: {{channels: 64}}'")
        (call, args), = entry.items()
        if call not in LAYER_CALLS:
            raise SpecError(f"{label}: unknown layer {call!r}; choose one of {', '.join(LAYER_CALLS)}")
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise SpecError(f"{label}.{call}: arguments must be a mapping, got {args!r}")
        method = getattr(builder, call)
        try:
            inspect.signature(method).bind(**args)
        except TypeError as exc:
            raise SpecError(f"{label}.{call}: {exc}") from None
        try:
            method(**args)
        except SpecError as exc:
            raise SpecError(f"{label}: {exc}") from None
    try:
        return builder.spec()
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
