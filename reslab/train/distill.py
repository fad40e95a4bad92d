"""Knowledge distillation: train a network to match a trained teacher's softened class probabilities.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": the loss is
``(1 - w) * CE(student, label) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``; the
``T^2`` keeps the soft term's gradients on the scale of the hard one's when ``T`` changes.

The teacher sees the images the student sees, under the same crop, flip and cutout, but normalised
with the teacher's own statistics (``TrainLoader(teacher_normalizer=...)``), since a network
trained with per-pixel mean subtraction and one trained with per-channel statistics pad and read
their inputs differently. One forward pass without gradients per (micro-)batch.

With ``teacher_mode: cached`` the teacher reads each training image once, unaugmented (and its mirror
image, when training mirrors) before the first step, and again when the run resumes (on the same
machine, the same logits); those logits then teach every augmented view of the image
(``CachedTeacher``, indexed by each batch's dataset rows). On a CPU, where a ResNet-56 teacher makes a ResNet-20 step
about 1.7x as long, this buys distillation at the price of plain training; what it gives up is a
teacher that sees the crop and the cutout square the student is shown.

Several teachers (a list; ``resnet56+resnet20`` on the command line) teach as one: the mean of their
logits, the ensemble of Hinton et al. Sec. 3. They must share one input normalisation, since they read
one view.

The trainer sees only ``Distillation``, a loss like cross-entropy (reslab/train/objective.py): the
teacher mode is chosen once, when the run starts, by which ``teacher_logits`` it is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.arrays import ImageArrays
from ..data.augment import Normalizer, preprocess_eval
from ..data.loader import Batch
from ..errors import CheckpointError, ConfigError
from ..fileio import sha256
from ..inference import optimize_for_inference
from .config import ENSEMBLE_JOIN




class MeanLogits(nn.Module):
    """An ensemble of teachers: the mean of their float32 logits."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x).float() for member in self.members]).mean(0)


@dataclass
class Teacher:
    model: nn.Module
    normalizer: Normalizer
    sources: list[str]  # as given: paths or bundled models' names
    files: list[dict[str, str]]  # each member's file (absolute) and SHA-256: what the run records in run.json

    @property
    def name(self) -> str:
        return ENSEMBLE_JOIN.join(self.sources)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


class OnlineTeacher:
    """The teacher reads each (micro-)batch the student reads, under its own normalisation."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.teacher.logits(batch.teacher_images)


class CachedTeacher:
    """The teacher's logits for every training image, read once; a batch takes its images' rows."""

    def __init__(self, logits: torch.Tensor):
        self.table = logits

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.table[batch.rows]


class Distillation:
    """The loss ``(1 - w) * CE + w * T^2 * KL`` against a teacher's logits for each batch."""

    def __init__(self, teacher_logits: Callable[[Batch], torch.Tensor], label_smoothing: float, weight: float,
                 temperature: float):
        self.teacher_logits = teacher_logits
        self.label_smoothing, self.weight, self.temperature = label_smoothing, weight, temperature

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        teacher_logits = self.teacher_logits(batch)
        hard = F.cross_entropy(logits, batch.labels, label_smoothing=self.label_smoothing)
        return (1 - self.weight) * hard + self.weight * distillation_loss(logits, teacher_logits, self.temperature)


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


def load_teacher(sources: list[str], checkpoints: list[Checkpoint], device: torch.device,
                 memory_format: torch.memory_format) -> Teacher:
    """The teacher in eval mode on ``device``, BN folded into its convolutions (it never trains); from
    several checkpoints, their ensemble (``MeanLogits``)."""
    normalizer = checkpoints[0].normalizer
    other = next((c for c in checkpoints[1:] if not c.normalizer.same_as(normalizer)), None)
    if other is not None:
        raise ConfigError(f"teacher {ENSEMBLE_JOIN.join(sources)}: the members of an ensemble must normalise their "
                          f"inputs alike (they read one view of each batch); {other.path} was trained with other "
                          f"statistics than {checkpoints[0].path}")
    models = [optimize_for_inference(c.build_model()).to(device, memory_format=memory_format) for c in checkpoints]
    model = models[0] if len(models) == 1 else MeanLogits(models).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    files = [{"source": source, "file": str(c.path.resolve()), "sha256": sha256(c.path)}
             for source, c in zip(sources, checkpoints)]
    return Teacher(model, normalizer, list(sources), files)


def prepare_teacher(sources: list[str], data: ImageArrays, eval_split: str | None, val_fraction: float,
                    device: torch.device, memory_format: torch.memory_format,
                    recorded: list[dict[str, str]] | None, say: Callable[[str], None]) -> Teacher:
    """Load and check the teacher. A resumed run passes the files its run.json ``recorded``: it reads
    those files and refuses any whose SHA-256 has changed, or it would distil from another network."""
    if recorded is not None:
        sources = [member["file"] if Path(member["file"]).exists() else member["source"] for member in recorded]
    try:
        checkpoints = [teacher_checkpoint(source) for source in sources]
    except CheckpointError as exc:
        if len(sources) == 1:
            raise
        raise CheckpointError(f"{exc} (an ensemble of {len(sources)}: {', '.join(sources)})") from None
    warnings = [check_teacher(c, source, data, eval_split, val_fraction) for source, c in zip(sources, checkpoints)]
    for warning in dict.fromkeys(w for w in warnings if w):  # each distinct warning once
        say(warning)
    teacher = load_teacher(sources, checkpoints, device, memory_format)
    if recorded is not None:
        changed = [f"{now['source']} (SHA-256 {now['sha256'][:12]}..., the run recorded {then['sha256'][:12]}...)"
                   for then, now in zip(recorded, teacher.files) if then["sha256"] != now["sha256"]]
        if changed or len(recorded) != len(teacher.files):
            raise CheckpointError(f"teacher {', '.join(changed) or teacher.name} has changed since this run started")
    return teacher


def cache_teacher(teacher: Teacher, images: torch.Tensor, labels: torch.Tensor, mirrored: bool,
                  device: torch.device, batch_size: int, say: Callable[[str], None]) -> CachedTeacher:
    started = time.monotonic()
    logits = cached_teacher_logits(teacher, images, mirrored, device, batch_size)
    agree = (logits.argmax(1) == labels).float().mean().item()
    say(f"teacher {teacher.name}: logits for {len(logits):,} training images cached in "
        f"{time.monotonic() - started:.0f} s (its top class is the label for {agree:.2%} of them)")
    return CachedTeacher(logits)


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
