"""Weights that ship with reslab (none are bundled yet; see ``available_pretrained``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import SpecError

# name -> weight file inside the package; filled as reslab's own trained weights are added.
BUNDLED: dict[str, str] = {}


def available_pretrained() -> list[str]:
    return sorted(BUNDLED)


def load_pretrained(name: str, **overrides: Any) -> nn.Module:
    if name not in BUNDLED:
        have = ", ".join(available_pretrained()) or "none yet"
        raise SpecError(f"no bundled weights for {name!r} (bundled: {have})")
    raise NotImplementedError  # unreachable until BUNDLED has entries
