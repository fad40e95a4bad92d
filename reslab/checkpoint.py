"""Checkpoints that carry everything needed to rebuild and use the model, written atomically and
loaded with ``weights_only=True`` (no code runs when a file is opened)."""

from __future__ import annotations

import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.arrays import ImageArrays
from .data.augment import Normalizer
from .errors import CheckpointError, SpecError
from .fileio import atomic_torch_save
from .models.resnet import NetSpec, ResNet

FORMAT = "reslab-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    spec: NetSpec
    classes: list[str]
    normalizer: Normalizer
    input_size: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    progress: dict[str, Any] = field(default_factory=dict)  # step, epoch, batch, warming_up, best_error
    config: dict[str, Any] = field(default_factory=dict)
    rng_state: torch.Tensor | None = None
    # Whether training mirrored images (so a mirror image is the same class, and flip TTA is sound).
    # None: not recorded, in checkpoints written before this field.
    trained_with_flips: bool | None = None
    # A run's weight average (reslab/train/averaging.py) and how many epochs' weights it holds, so a
    # resumed run carries it on.
    average_state: dict[str, torch.Tensor] | None = None
    average_count: int = 0
    path: Path | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "spec": self.spec.to_dict(), "classes": list(self.classes),
            "normalizer": self.normalizer.to_dict(), "input_size": self.input_size, "model": self.model_state,
            "optimizer": self.optimizer_state, "progress": dict(self.progress), "config": dict(self.config),
            "rng": self.rng_state, "trained_with_flips": self.trained_with_flips,
            "average": None if self.average_state is None else {"state": self.average_state, "count": self.average_count},
        }

    def build_model(self) -> nn.Module:
        """The network with its trained weights, in eval mode."""
        model = ResNet(self.spec)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path}: weights do not match the stored architecture ({str(exc).splitlines()[0]})") from None
        return model.eval()


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> Path:
    return atomic_torch_save(checkpoint.to_payload(), Path(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = resolve_checkpoint_path(path)
    payload = read_torch_file(path, map_location)
    if not is_checkpoint_payload(payload):
        raise CheckpointError(f"{path}: not a reslab checkpoint (weights saved by other code: `reslab import "
                              f"{path.name} --model NAME`, or `reslab train --init-from {path.name} --model NAME`)")
    return checkpoint_from_payload(payload, path)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run folder stands for its ``best.pt`` (else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                return path / name
        raise CheckpointError(f"{path}: no best.pt or last.pt in this run folder")
    return path


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """What a PyTorch file holds, loaded with ``weights_only=True``; a missing or unreadable file is a
    ``CheckpointError``."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, IndexError,
            KeyError, TypeError, AttributeError, struct.error) as exc:  # what arbitrary bytes make torch.load raise
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated, or not a PyTorch file: "
                              f"{type(exc).__name__})") from None


def is_checkpoint_payload(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def checkpoint_from_payload(payload: dict[str, Any], path: Path) -> Checkpoint:
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer reslab (format {payload['version']})")
    try:
        spec = NetSpec.from_dict(payload["spec"])
        return Checkpoint(
            spec=spec, classes=list(payload["classes"]), normalizer=Normalizer.from_dict(payload["normalizer"]),
            input_size=int(payload["input_size"]), model_state=payload["model"],
            optimizer_state=payload.get("optimizer"), progress=dict(payload.get("progress") or {}),
            config=dict(payload.get("config") or {}), rng_state=payload.get("rng"),
            trained_with_flips=payload.get("trained_with_flips"), path=path,
            average_state=(payload.get("average") or {}).get("state"),
            average_count=int((payload.get("average") or {}).get("count", 0)),
        )
    except (KeyError, TypeError, SpecError) as exc:
        raise CheckpointError(f"{path}: incomplete reslab checkpoint ({exc})") from None


def checkpoint_dataset(checkpoint: Checkpoint, data: str | None, data_root: str | None, split: str,
                       download: bool = True) -> ImageArrays:
    """The dataset a checkpoint was trained on (or ``data``), read with the same options, after
    checking that its classes, channels and image size are the model's. ``download=False``: a named
    dataset that is not on disk is an error instead of a download."""
    from .data import DataOptions, load_dataset

    config = checkpoint.config
    source = data or config.get("data")
    if not source:
        raise CheckpointError(f"{checkpoint.path}: no dataset recorded; pass --data")
    options = DataOptions(root=data_root or config.get("data_root"), val_fraction=config.get("val_fraction", 0.1),
                          image_size=config.get("image_size") or checkpoint.input_size,
                          channels=checkpoint.spec.in_channels if checkpoint.spec.in_channels in (1, 3) else 3,
                          download=download)
    arrays = load_dataset(source, split, options)
    if len(arrays.classes) != len(checkpoint.classes) or arrays.channels != checkpoint.spec.in_channels:
        raise CheckpointError(f"{checkpoint.path}: model has {len(checkpoint.classes)} classes and "
                              f"{checkpoint.spec.in_channels} channels; {arrays.name} has {len(arrays.classes)} "
                              f"and {arrays.channels}")
    if arrays.classes != checkpoint.classes:
        raise CheckpointError(f"{checkpoint.path}: class names differ from {arrays.name}'s "
                              f"({checkpoint.classes[0]!r}... vs {arrays.classes[0]!r}...)")
    if arrays.image_size != checkpoint.input_size:
        raise CheckpointError(f"{checkpoint.path}: trained on {checkpoint.input_size}px images, "
                              f"{arrays.name} has {arrays.image_size}px")
    return arrays


def mirrored_in_training(checkpoint: Checkpoint, data: ImageArrays | None = None) -> bool | None:
    """Whether the model was trained on mirrored images: as recorded, or, for checkpoints written
    before that was recorded, derived from ``data``'s augmentation default and the run's ``augment``
    setting; None when neither says."""
    if checkpoint.trained_with_flips is not None:
        return checkpoint.trained_with_flips
    if data is None:
        return None
    return bool(data.augment.flip and checkpoint.config.get("augment", True))
