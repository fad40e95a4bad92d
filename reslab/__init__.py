"""reslab: build, train, study and use deep residual networks (He et al., 2015)."""

from .models import Builder, NetSpec, ResNet, create_model, list_models, model_info, resolve_spec
from .summary import summarize

__version__ = "0.1.0"

__all__ = ["Builder", "NetSpec", "ResNet", "create_model", "list_models", "model_info", "resolve_spec",
           "summarize", "__version__"]
