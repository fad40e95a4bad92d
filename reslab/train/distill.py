"""Knowledge distillation: train a network to match a trained teacher's softened class probabilities.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": the loss is
``(1 - w) * CE(student, label) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``; the
``T^2`` keeps the soft term's gradients on the scale of the hard one's when ``T`` changes.

The teacher sees the images the student sees, under the same crop, flip and cutout, but normalised
with the teacher's own statistics (``TrainLoader.epoch(second_normalizer=...)``), since a network
trained with per-pixel mean subtraction and one trained with per-channel statistics pad and read
their inputs differently. One forward pass without gradients per (micro-)batch.

With ``teacher_mode: cached`` the teacher reads each training image once, unaugmented (and its mirror
image, when training mirrors) before the first step, and again when the run resumes (on the same
machine, the same logits); those logits then teach every augmented view of the image
(``TrainLoader.epoch(targets=...)``). On a CPU, where a ResNet-56 teacher makes a ResNet-20 step
about 1.7x as long, this buys distillation at the price of plain training; what it gives up is a
teacher that sees the crop and the cutout square the student is shown.

Several teachers joined with ``+`` (``resnet56+resnet20``) teach as one: the mean of their logits,
the ensemble of Hinton et al. Sec. 3. They must share one input normalisation, since they read one view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.arrays import ImageArrays
from ..data.augment import Normalizer, preprocess_eval
from ..errors import CheckpointError, ConfigError
from ..inference import optimize_for_inference
from ..checkpoint import Checkpoint, load_checkpoint


ENSEMBLE_JOIN = "+"


class MeanLogits(nn.Module):
    """An ensemble of teachers: the mean of their float32 logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x).float() for member in self.members]).mean(0)


@dataclass
class Teacher:
    model: nn.Module | None  # None once its outputs are cached (teacher_mode cached)
    normalizer: Normalizer
    source: str  # as given: a path or a bundled model's name
    sha256: str  # of the checkpoint file (an ensemble's, +-joined): a resumed run checks it has the same teacher

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


def teacher_sources(teacher: str) -> list[str]:
    """The members of ``teacher``: itself when it names an existing file or folder, else its +-joined parts."""
    if Path(teacher).exists() or ENSEMBLE_JOIN not in teacher:
        return [teacher]
    parts = teacher.split(ENSEMBLE_JOIN)
    if "" in parts:
        raise ConfigError(f"teacher {teacher!r}: an empty name between the '+' of an ensemble")
    return parts


def teacher_checkpoint(source: str) -> Checkpoint:
    """A checkpoint file, a run folder (its best.pt), or the name of a bundled model (``resnet56``)."""
    from ..models.pretrained import available_pretrained, pretrained_checkpoint

    if not Path(source).exists():
        if source in available_pretrained():
            return pretrained_checkpoint(source)
        raise CheckpointError(f"teacher {source}: no such checkpoint or run folder, nor a bundled model "
                              f"(bundled: {', '.join(available_pretrained())})")
    return load_checkpoint(source)


def check_teacher(checkpoint: Checkpoint, source: str, data: ImageArrays, eval_split: str | None,
                  val_fraction: float) -> str | None:
    """Refuse a teacher that predicts other classes, reads other images, or has seen the images the
    student is evaluated on (its soft labels would carry them into the student's numbers). Returns a
    warning when the checkpoint does not say what it was trained on (weights converted from elsewhere)."""
    if checkpoint.classes != data.classes:
        raise ConfigError(f"teacher {source}: its classes ({len(checkpoint.classes)}: {checkpoint.classes[0]!r}...) "
                          f"are not {data.name}'s ({len(data.classes)}: {data.classes[0]!r}...)")
    if checkpoint.spec.in_channels != data.channels or checkpoint.input_size != data.image_size:
        raise ConfigError(f"teacher {source}: takes {checkpoint.spec.in_channels}-channel {checkpoint.input_size}px "
                          f"images, {data.name} has {data.channels}-channel {data.image_size}px")
    trained = checkpoint.config
    if eval_split == "val" and trained.get("train_split") == "trainval":
        raise ConfigError(f"teacher {source} was trained on train+val, so it has seen the validation images "
                          "this run is measured on")
    if eval_split == "val" and trained.get("val_fraction", val_fraction) != val_fraction:
        raise ConfigError(f"teacher {source} held out val_fraction {trained['val_fraction']}, this run "
                          f"{val_fraction}: its training images overlap this run's validation images")
    if eval_split == "val" and "train_split" not in trained:
        return (f"warning: teacher {source} does not record what it was trained on; if it saw this run's "
                "validation images, the validation numbers will read too well")
    return None


def load_teacher(source: str, checkpoints: list[Checkpoint], device: torch.device,
                 memory_format: torch.memory_format) -> Teacher:
    """The teacher in eval mode on ``device``, BN folded into its convolutions (it never trains); from
    several checkpoints, their ensemble (``MeanLogits``)."""
    from ..fileio import sha256

    normalizer = checkpoints[0].normalizer
    other = next((c for c in checkpoints[1:] if not c.normalizer.same_as(normalizer)), None)
    if other is not None:
        raise ConfigError(f"teacher {source}: the members of an ensemble must normalise their inputs alike "
                          f"(they read one view of each batch); {other.path} was trained with other statistics "
                          f"than {checkpoints[0].path}")
    models = [optimize_for_inference(c.build_model()).to(device, memory_format=memory_format) for c in checkpoints]
    model = models[0] if len(models) == 1 else MeanLogits(models).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, normalizer, source, ENSEMBLE_JOIN.join(sha256(c.path) for c in checkpoints))


@torch.no_grad()
def cached_teacher_logits(teacher: Teacher, images: torch.Tensor, mirrored: bool, device: torch.device,
                          batch_size: int = 500) -> torch.Tensor:
    """The teacher's float32 logits for every image (uint8, N x C x H x W), unaugmented; with ``mirrored``
    the mean of the logits for the image and for its mirror image, since training shows both."""
    normalizer = teacher.normalizer.to(device)
    rows = []
    for start in range(0, len(images), batch_size):
        x = preprocess_eval(images[start:start + batch_size].to(device), normalizer)
        logits = teacher.logits(x)
        if mirrored:
            logits = (logits + teacher.logits(x.flip(3))) / 2
        rows.append(logits)
    return torch.cat(rows)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def training_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                  teacher_logits: torch.Tensor | None = None, weight: float = 0.0,
                  temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy with the labels; with a teacher, ``(1 - weight) * CE + weight * distillation``."""
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return hard
    return (1 - weight) * hard + weight * distillation_loss(logits, teacher_logits, temperature)
