"""Knowledge distillation: train a network to match a trained teacher's softened class probabilities.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": the loss is
``(1 - w) * CE(student, label) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``; the
``T^2`` keeps the soft term's gradients on the scale of the hard one's when ``T`` changes.

The teacher sees exactly the augmented batch the student sees (same crop, flip and cutout), one
forward pass without gradients per step. Its inputs are re-normalised when the two networks were
trained with different statistics: the loader normalises with the student's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.arrays import ImageArrays
from ..data.augment import Normalizer
from ..errors import ConfigError
from ..inference import optimize_for_inference
from .checkpoint import Checkpoint, load_checkpoint


@dataclass
class Teacher:
    model: nn.Module
    scale: torch.Tensor | None  # student-normalised input * scale + shift = teacher-normalised input
    shift: torch.Tensor | None
    source: str

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            x = x * self.scale + self.shift
        return self.model(x).float()


def teacher_checkpoint(source: str) -> Checkpoint:
    """A checkpoint file, a run folder, or the name of a bundled model (``resnet56``)."""
    from ..models.pretrained import available_pretrained, pretrained_checkpoint

    if not Path(source).exists() and source in available_pretrained():
        return pretrained_checkpoint(source)
    return load_checkpoint(source)


def input_map(student: Normalizer, teacher: Normalizer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` taking student-normalised images to teacher-normalised ones, or None when
    both use the same statistics. Raw pixels are ``x * std + mean`` under either normaliser."""
    if (student.mean.shape == teacher.mean.shape and torch.equal(student.mean, teacher.mean)
            and torch.equal(student.std, teacher.std)):
        return None

    def as_image(values: torch.Tensor) -> torch.Tensor:  # (C,) -> (C, 1, 1); (C, H, W) stays
        return values[:, None, None] if values.dim() == 1 else values

    s_mean, s_std = as_image(student.mean), as_image(student.std)
    t_mean, t_std = as_image(teacher.mean), as_image(teacher.std)
    return s_std / t_std, (s_mean - t_mean) / t_std


def load_teacher(source: str, data: ImageArrays, normalizer: Normalizer, device: torch.device,
                 memory_format: torch.memory_format) -> Teacher:
    """The teacher for training on ``data``, in eval mode on ``device``, after checking that it
    predicts the same classes from the same kind of images."""
    checkpoint = teacher_checkpoint(source)
    if checkpoint.classes != data.classes:
        raise ConfigError(f"teacher {source}: its classes ({len(checkpoint.classes)}: {checkpoint.classes[0]!r}...) "
                          f"are not {data.name}'s ({len(data.classes)}: {data.classes[0]!r}...)")
    if checkpoint.spec.in_channels != data.channels or checkpoint.input_size != data.image_size:
        raise ConfigError(f"teacher {source}: takes {checkpoint.spec.in_channels}-channel {checkpoint.input_size}px "
                          f"images, {data.name} has {data.channels}-channel {data.image_size}px")
    # BN folded into the convs: the teacher only ever runs in eval mode, and one op less per layer
    # is time saved on every training step.
    model = optimize_for_inference(checkpoint.build_model()).to(device, memory_format=memory_format)
    for p in model.parameters():
        p.requires_grad_(False)
    mapping = input_map(normalizer, checkpoint.normalizer)
    scale, shift = (None, None) if mapping is None else (mapping[0].to(device), mapping[1].to(device))
    return Teacher(model, scale, shift, source)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
