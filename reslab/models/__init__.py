"""Residual and plain networks: blocks, shortcuts, the network, presets, builder and registry."""

from .builder import Builder
from .registry import create_model, list_models, model_info, resolve_spec
from .resnet import NetSpec, ResNet

__all__ = ["Builder", "NetSpec", "ResNet", "create_model", "list_models", "model_info", "resolve_spec"]
