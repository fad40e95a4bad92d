"""Networks written as YAML/JSON files in the builder's vocabulary.

Either a preset with overrides::

    model: resnet56
    shortcut: B

or a network layer by layer (each entry is one builder call; ``repeat`` repeats a block)::

    in_channels: 3
    num_classes: 10
    shortcut: B
    preact: true          # optional: pre-activation blocks (He et al. 2016)
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
from .resnet import MAX_BLOCKS, MAX_PARAMS, NetSpec


LAYER_CALLS = ("init_block", "max_pool", "avg_pool", "residual_block", "fc")
NETWORK_KEYS = ("in_channels", "num_classes", "shortcut", "residual", "preact", "bottleneck_stride",
                "zero_init_residual", "input_size", "name")


def read_spec_file(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, SpecError)


def _count(value: Any, default: int) -> int:
    """A positive int as written, else ``default`` (the builder reports the wrong value later)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _taps(filter_: Any) -> int:
    if isinstance(filter_, (list, tuple)) and len(filter_) == 2:
        return _count(filter_[0], 1) * _count(filter_[1], 1)
    return _count(filter_, 3) ** 2 if not isinstance(filter_, (list, tuple)) else 9


def _out_width(args: dict[str, Any], width: int) -> int:
    channel = args.get("channel")
    if isinstance(channel, (list, tuple)) and len(channel) == 2:
        return _count(channel[1], width)
    return _count(args.get("channels"), width)


def estimate_size(data: dict[str, Any]) -> tuple[int, int]:
    """(blocks, parameters) of the network a spec mapping describes, from its numbers alone, before
    anything is built. Convolution and classifier weights only (BN and shortcuts add a few percent);
    a value of the wrong type counts as its default here and is reported by the builder."""
    if "model" in data:
        # A preset: only a depth (the CIFAR families, basic blocks of two 3x3 convs, widest 64 unless
        # widths says), widths or num_classes can make it large; 2048 is the widest preset's head.
        blocks = (_count(data.get("depth"), 2) - 2) // 2  # depth counts the stem conv and the classifier
        widths = data.get("widths") if isinstance(data.get("widths"), (list, tuple)) else [64]
        widest = max((_count(w, 1) for w in widths), default=1)
        return blocks, blocks * 2 * 9 * widest ** 2 + 2048 * _count(data.get("num_classes"), 1000)
    width = _count(data.get("in_channels"), 3)
    blocks = params = 0
    for entry in data.get("layers") if isinstance(data.get("layers"), list) else []:
        if not isinstance(entry, dict) or len(entry) != 1:
            continue
        (call, args), = entry.items()
        args = args if isinstance(args, dict) else {}
        if call in ("init_block", "residual_block"):
            out, taps = _out_width(args, width), _taps(args.get("filter", 3))
            repeat = _count(args.get("repeat"), 1) if call == "residual_block" else 0
            params += taps * width * out + repeat * 2 * taps * out * out if repeat else taps * width * out
            blocks += repeat
            width = out
    return blocks, params + width * _count(data.get("num_classes"), 10)


def check_size(data: dict[str, Any], where: str) -> None:
    blocks, params = estimate_size(data)
    if blocks > MAX_BLOCKS or params > MAX_PARAMS:
        raise SpecError(f"{where}: too large to build: about {blocks:,} residual blocks and {params:.2g} parameters "
                        f"(limits {MAX_BLOCKS:,} and {MAX_PARAMS:.0e}; ResNet-1202 has 600 and 1.9e+07)")


def spec_from_mapping(data: dict[str, Any], where: str = "spec") -> NetSpec:
    """The network a spec's ``layers`` describe (a spec naming a ``model`` preset is resolved by the
    registry, which knows the presets; it checks the size first)."""
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
