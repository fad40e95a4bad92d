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
import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from .builder import Builder
from .resnet import NetSpec

LAYER_CALLS = ("init_block", "max_pool", "avg_pool", "residual_block", "fc")
NETWORK_KEYS = ("in_channels", "num_classes", "shortcut", "residual", "bottleneck_stride",
                "zero_init_residual", "input_size", "name")


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file whose top level is a mapping, or a ``SpecError`` naming the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping of keys to values")
    return data


def spec_from_mapping(data: dict[str, Any], where: str = "spec") -> NetSpec:
    if "model" in data:
        from .registry import resolve_spec

        overrides = {k: v for k, v in data.items() if k != "model"}
        try:
            return resolve_spec(str(data["model"]), **overrides)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
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


def load_spec(path: str | Path) -> NetSpec:
    """Read a network spec file (see the module docstring for the format)."""
    data = read_mapping(path)
    spec = spec_from_mapping(data, str(path))
    if "name" not in data and "model" not in data:
        spec = spec.with_overrides(name=Path(path).stem)
    return spec
