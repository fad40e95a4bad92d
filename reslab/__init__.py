"""reslab: build, train, study and use deep residual networks (He et al., 2015)."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that ``import reslab.entry`` (the command's entry point) is
# instant and Ctrl-C during PyTorch's import can be handled; ``from reslab import create_model`` works
# as before.
_EXPORTS = {"Builder": ".models", "NetSpec": ".models", "ResNet": ".models", "create_model": ".models",
            "list_models": ".models", "model_info": ".models", "resolve_spec": ".models",
            "summarize": ".summary"}

__all__ = ["Builder", "NetSpec", "ResNet", "create_model", "list_models", "model_info", "resolve_spec",
           "summarize", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    if not name.startswith("_"):  # a subpackage used as an attribute: reslab.models after ``import reslab``
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
