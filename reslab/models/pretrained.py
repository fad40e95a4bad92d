"""Weights trained by reslab itself and shipped inside the package.

``weights/index.json`` lists each bundled model: its file, the file's SHA-256 (checked on every
load) and its model card. Files are reslab checkpoints without optimizer state, loaded with
``torch.load(weights_only=True)``: no code runs when they are opened.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, SpecError
from ..fileio import sha256

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@lru_cache(maxsize=1)
def _index() -> dict[str, dict[str, Any]]:
    path = WEIGHTS_DIR / "index.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def available_pretrained() -> list[str]:
    return sorted(_index())


def pretrained_info(name: str) -> dict[str, Any]:
    index = _index()
    if name not in index:
        have = ", ".join(sorted(index)) or "none"
        raise SpecError(f"no bundled weights for {name!r} (bundled: {have})")
    return index[name]


def pretrained_checkpoint(name: str):
    """The bundled checkpoint of ``name``, after checking its SHA-256."""
    from ..checkpoint import load_checkpoint

    info = pretrained_info(name)
    path = WEIGHTS_DIR / info["file"]
    if not path.exists():
        raise CheckpointError(f"bundled weights for {name!r} are missing from the installation ({path})")
    if sha256(path) != info["sha256"]:
        raise CheckpointError(f"bundled weights {path} fail their SHA-256 check; reinstall reslab")
    return load_checkpoint(path)


def load_pretrained(name: str, **overrides: Any) -> nn.Module:
    """``create_model(name, pretrained=True)``: the bundled network, in eval mode."""
    checkpoint = pretrained_checkpoint(name)
    for key, value in overrides.items():
        current = getattr(checkpoint.spec, key, None)
        if current != value:
            raise SpecError(f"bundled {name!r} has {key}={current!r}; it cannot be loaded with {key}={value!r}")
    model = checkpoint.build_model()
    model.classes = checkpoint.classes  # type: ignore[attr-defined]
    model.normalizer = checkpoint.normalizer  # type: ignore[attr-defined]
    return model
