"""Everything a run needs before its first step, built from the config in one direction:
config -> data -> model, optimizer, schedule -> objective and optional parts -> the run folder.

``prepare_run`` returns a ``TrainingRun``: the parts the loop (reslab/train/loop.py) works with. A
resumed run rebuilds the same parts from its folder (``last.pt``, ``run.json``) and checks that they
are the ones it started with.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..data import DataOptions, EvalLoader, Normalizer, TrainLoader
from ..data.arrays import ImageArrays
from ..data.files import ImageFiles
from ..data.stream import StreamEvalLoader, StreamTrainLoader
from ..errors import CheckpointError, ConfigError, SpecError
from ..fileio import atomic_write_text, read_yaml_mapping, sha256
from ..inference import bfloat16_is_fast, slow_bfloat16_warning
from ..models.registry import resolve_spec
from ..models.resnet import NetSpec, ResNet
from . import distributed
from .averaging import WeightAverage, WeightAveraging, first_averaged_epoch
from .config import DEFAULT_MODEL, TrainConfig, teacher_sources
from .console import Console
from .distill import Distillation, OnlineTeacher, Teacher, cache_teacher, prepare_teacher
from .evaluate import evaluate
from .extras import EpochExtra
from .finetune import (StartingWeights, apply_finetune, needs_new_classifier, parameter_groups, run_normalizer,
                       starting_weights)
from .history import TensorBoard
from .objective import CrossEntropy, Objective
from .run_lock import RunLock
from .rundata import load_run_data
from .schedules import PlateauSchedule, Schedule, milestone_steps, schedule_for
from .state import RunState


@dataclass
class TrainingRun:
    """The parts of one run, as the loop uses them. ``model`` is what is saved; ``forward`` is what
    trains (the model wrapped for DDP and compiled, when asked)."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    ctx: distributed.DistContext
    spec: NetSpec
    classes: list[str]
    input_size: int
    normalizer: Normalizer
    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule | PlateauSchedule
    total_steps: int
    loader: TrainLoader | StreamTrainLoader
    eval_loader: EvalLoader | StreamEvalLoader | None
    objective: Objective
    extras: list[EpochExtra]
    state: RunState
    console: Console
    tensorboard: TensorBoard
    lock: RunLock
    autocast: bool
    last_lr: float = 0.0
    started: float = field(default_factory=time.monotonic)  # this session's start
    wall_at_start: float = 0.0  # wall time of the sessions before this one (a resumed run)

    def wall_time(self) -> float:
        return self.wall_at_start + time.monotonic() - self.started

    def checkpoint_of(self, weights: nn.Module, **training_state: Any) -> Checkpoint:
        return Checkpoint(spec=self.spec, classes=self.classes, normalizer=self.normalizer,
                          input_size=self.input_size, model_state=weights.state_dict(),
                          progress=self.state.to_dict(), config=self.config.to_dict(),
                          trained_with_flips=self.loader.augment.flip, **training_state)

    def evaluate(self, model: nn.Module, prefix: str = "") -> dict[str, float]:
        """``model``'s loss and errors on the evaluation split, summed over every process."""
        distributed.broadcast_buffers(model, self.ctx)
        result = evaluate(model, self.eval_loader, self.spec.num_classes, autocast=self.autocast)
        distributed.all_sum(result.tensors(), self.ctx)
        return {f"{prefix}eval_loss": result.loss, f"{prefix}eval_error": result.error,
                f"{prefix}eval_top5_error": result.top5_error}

    def agree(self, local: bool) -> bool:
        """Whether to stop (a request, a divergence): under DDP every process must stop at the same step,
        so they agree at sync points only."""
        if self.ctx.enabled:
            return self.state.step % SYNC_EVERY == 0 and distributed.any_true(local, self.ctx, self.device)
        return local


SYNC_EVERY = 25  # steps between host syncs (progress bar, NaN check, stop requests under DDP)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps requested but MPS is not available")
    return torch.device(name)


def default_run_dir(config: TrainConfig) -> Path:
    data = Path(config.data).name or "data"
    start = Path(config.init_from) if config.init_from else None
    if start is not None and start.name in ("best.pt", "last.pt"):
        start = start.parent  # a run's checkpoint: name the new run after that run
    model = Path(config.model or start or DEFAULT_MODEL).stem
    # Under torchrun every process (and every restart) must agree on the folder: use the run id.
    suffix = os.environ.get("TORCHELASTIC_RUN_ID") or datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model}-{data}-{suffix}"


def prepare_run(config: TrainConfig, device: torch.device, ctx: distributed.DistContext, resume: bool,
                quiet: bool) -> TrainingRun:
    device = torch.device("cuda", ctx.local_rank) if device.type == "cuda" and ctx.enabled else device
    _configure_torch(config, device)
    if config.batch_size % (ctx.world_size * config.accumulation):
        raise ConfigError(f"batch_size {config.batch_size} does not split into {ctx.world_size} process(es) x "
                          f"{config.accumulation} micro-batch(es)")
    run_dir = _run_folder(config, resume)
    lock = RunLock(run_dir if ctx.is_main else None)
    try:
        return _prepare(config, device, ctx, run_dir, resume, Console(quiet or not ctx.is_main), lock)
    except BaseException:
        lock.release()
        raise


def _prepare(config: TrainConfig, device: torch.device, ctx: distributed.DistContext, run_dir: Path,
             resume: bool, console: Console, lock: RunLock) -> TrainingRun:
    facts = read_run_facts(run_dir) if resume else {}
    data = load_run_data(_with_recorded_format(config, facts), data_options(config), console.line)
    facts["data_format"] = data.format
    train_data = data.description
    checkpoint = _resumed_checkpoint(run_dir, train_data) if resume else None
    start = starting_weights(config) if config.init_from and not checkpoint else None
    normalizer = checkpoint.normalizer if checkpoint else run_normalizer(config, train_data, start, data.normalizer)
    torch.manual_seed(config.seed)
    spec, weights = _starting_weights(config, train_data, checkpoint, start, facts)
    model = ResNet(spec)
    if weights is not None:
        model.load_state_dict(weights, strict=checkpoint is not None)
    apply_finetune(model, config)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, config)
    if checkpoint and checkpoint.optimizer_state:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    teacher = None
    if config.teacher:
        if resume and "teacher" not in facts:
            console.line(f"warning: {run_dir} recorded no checksums of its teacher (no run.json), so a changed "
                         "teacher cannot be noticed")
        teacher = prepare_teacher(config.teacher, train_data, config.eval_split, config.val_fraction, device,
                                  memory_format, facts.get("teacher"), console.line)
        facts["teacher"] = teacher.files
    online = teacher is not None and config.teacher_mode == "online"
    loader = data.train_loader(config, normalizer, device, ctx.rank, ctx.world_size,
                               teacher_normalizer=(teacher.normalizer if online and not teacher.normalizer.same_as(normalizer)
                                                   else None))
    eval_loader = data.eval_loader(config, normalizer, device, ctx.rank, ctx.world_size)
    objective = _objective(config, teacher, loader, device, console)
    total_steps = config.iterations or math.ceil(config.epochs * len(loader))
    console.total = total_steps
    state = RunState.from_dict(checkpoint.progress, str(checkpoint.path)) if checkpoint else RunState(
        warming_up=config.warmup_until_error is not None)
    if checkpoint is not None and checkpoint.rng_state is not None:
        torch.set_rng_state(checkpoint.rng_state)
    forward = distributed.wrap(model, ctx, device, config.sync_bn)
    run = TrainingRun(
        config=config, run_dir=run_dir, device=device, ctx=ctx, spec=spec, classes=train_data.classes,
        input_size=train_data.image_size, normalizer=normalizer, model=model,
        forward=torch.compile(forward) if config.compile else forward, optimizer=optimizer,
        schedule=schedule_for(config, total_steps, state.history), total_steps=total_steps, loader=loader, eval_loader=eval_loader,
        objective=objective, extras=_extras(config, model, checkpoint, total_steps / len(loader), console),
        state=state, console=console, tensorboard=TensorBoard(run_dir, enabled=ctx.is_main), lock=lock,
        autocast=(config.amp and device.type == "cuda") or (device.type == "cpu" and _cpu_bf16(config, facts, device)),
        wall_at_start=state.wall_time_s)
    run.last_lr = run.schedule(state.step, state.warming_up)
    _write_run_files(run, facts, resume)
    _announce(run, train_data, teacher, resumed=checkpoint is not None, start=facts.get("init_from"))
    return run


def data_options(config: TrainConfig) -> DataOptions:
    return DataOptions(root=config.data_root, val_fraction=config.val_fraction, image_size=config.image_size,
                       channels=config.channels, strict=config.strict)


def model_spec(config: TrainConfig, data: ImageArrays | ImageFiles, start: NetSpec | None = None,
               implied: dict[str, Any] | None = None) -> NetSpec:
    """The network the config names, shaped for ``data``; with no model named, ``start`` (the network of
    the file the run starts from) or DEFAULT_MODEL. ``implied``: options the start file's layout implies
    (the config's own win)."""
    overrides = {**(implied or {}), "num_classes": len(data.classes), "in_channels": data.channels,
                 **config.model_options}
    return resolve_spec(config.model or start or DEFAULT_MODEL, **overrides)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer over what trains (reslab/train/finetune.py: all, the classifier alone, or the backbone at a
    smaller rate)."""
    groups = parameter_groups(model, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


def _configure_torch(config: TrainConfig, device: torch.device) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _run_folder(config: TrainConfig, resume: bool) -> Path:
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder; choose another --out")
    if not resume and (run_dir / "last.pt").exists():
        # Never train over a user's run: its checkpoints would be replaced.
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    return run_dir


def _resumed_checkpoint(run_dir: Path, data: ImageArrays | ImageFiles) -> Checkpoint:
    checkpoint = load_checkpoint(run_dir / "last.pt")
    trained_on = checkpoint.config.get("data", "another dataset")
    if (checkpoint.classes != data.classes or checkpoint.spec.in_channels != data.channels
            or checkpoint.input_size != data.image_size):
        raise CheckpointError(f"{checkpoint.path} was trained on {trained_on} ({len(checkpoint.classes)} classes, "
                              f"{checkpoint.spec.in_channels}-channel {checkpoint.input_size}px images), not on "
                              f"{data.name} ({len(data.classes)} classes, {data.channels}-channel {data.image_size}px)")
    return checkpoint


def _starting_weights(config: TrainConfig, data: ImageArrays | ImageFiles, checkpoint: Checkpoint | None,
                      start: StartingWeights | None, facts: dict[str, Any]
                      ) -> tuple[NetSpec, dict[str, torch.Tensor] | None]:
    """The network and the weights the run starts from: a resumed run's, ``init_from``'s, or none (a fresh
    network). Either file must hold the network the config names; ``init_from`` may differ in its class
    count (fine-tuning: a fresh classifier). The start file's SHA-256 goes to run.json (it may change later,
    as a bundled model's does), with its kind and whether the classifier is new."""
    if checkpoint is not None:
        implied = facts.get("init_from", {}).get("implied_model_options")
        try:
            wanted = model_spec(config, data, checkpoint.spec, implied)
        except SpecError:  # a spec file moved or deleted since: last.pt holds the whole network anyway
            wanted = checkpoint.spec
        _check_same_network(checkpoint.spec, wanted, checkpoint.path)
        return checkpoint.spec, checkpoint.model_state
    if start is None:
        return model_spec(config, data), None
    spec, state = start.spec, dict(start.state)
    if spec.in_channels != data.channels:
        raise CheckpointError(f"{config.init_from}: model takes {spec.in_channels}-channel input, "
                              f"{data.name} has {data.channels}")
    new_head = needs_new_classifier(start, data.classes)
    if new_head:
        spec = spec.with_overrides(num_classes=len(data.classes))
        state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    _check_same_network(spec, model_spec(config, data, spec, start.implied_options), start.path)
    facts["init_from"] = {"file": str(start.path.resolve()), "sha256": sha256(start.path), "kind": start.source,
                          "classes_in_file": start.spec.num_classes, "new_classifier": new_head}
    if start.implied_options:
        facts["init_from"]["implied_model_options"] = start.implied_options
    return spec, state


def _check_same_network(found: NetSpec, wanted: NetSpec, path: Path | None) -> None:
    """Refuse a file that holds another network than the config names (names aside: a spec file's
    network and the preset it equals are one network)."""
    if found.with_overrides(name="") != wanted.with_overrides(name=""):
        name = found.name if found.name != wanted.name else f"{found.name} of another shape"
        raise CheckpointError(f"{path} holds {name}, but this run trains {wanted.name}; name the file's "
                              f"network with --model (or leave --model and --shortcut out to train it)")


def _objective(config: TrainConfig, teacher: Teacher | None, loader: TrainLoader, device: torch.device,
               console: Console) -> Objective:
    if teacher is None:
        return CrossEntropy(config.label_smoothing)
    if config.teacher_mode == "online":
        targets: Callable = OnlineTeacher(teacher)
    elif not isinstance(loader, TrainLoader):
        raise ConfigError("teacher_mode cached reads every training image once, from memory: with data_format "
                          "stream or cache, use teacher_mode online")
    else:
        targets = cache_teacher(teacher, loader.images, loader.labels, loader.augment.flip, device,
                                config.eval_batch_size, console.line)
    return Distillation(targets, config.label_smoothing, config.distill_weight, config.distill_temperature)


def _extras(config: TrainConfig, model: nn.Module, checkpoint: Checkpoint | None, epochs: float,
            console: Console) -> list[EpochExtra]:
    if config.average_from is None:
        return []
    first = first_averaged_epoch(config.average_from, epochs)
    if first > math.ceil(epochs):
        console.line(f"warning: average_from {config.average_from:g} lies beyond this run's {math.ceil(epochs)} "
                     "epochs, so no weights will be averaged")
    carried = checkpoint is not None and checkpoint.average_state is not None
    average = WeightAverage(model, checkpoint.average_state, checkpoint.average_count) if carried else WeightAverage(model)
    return [WeightAveraging(first, average)]


def read_run_facts(run_dir: Path) -> dict[str, Any]:
    """What the run recorded when it started (run.json): the start file and the teachers with their SHA-256.
    Runs made before run.json held them recorded them in config.yaml (``teacher`` +-joined, with
    ``teacher_sha256``; ``init_from_sha256``): read from there."""
    try:
        facts = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        facts = {}
    try:
        old = read_yaml_mapping(run_dir / "config.yaml", ConfigError, "config file")
    except ConfigError:
        old = {}
    if "teacher" not in facts and old.get("teacher_sha256") and isinstance(old.get("teacher"), str):
        members = teacher_sources(old["teacher"])
        facts["teacher"] = [{"source": m, "file": m, "sha256": h} for m, h in zip(members, old["teacher_sha256"].split("+"))]
    if "init_from" not in facts and old.get("init_from_sha256") and old.get("init_from"):
        facts["init_from"] = {"file": old["init_from"], "sha256": old["init_from_sha256"]}
    return facts


def _cpu_bf16(config: TrainConfig, facts: dict[str, Any], device: torch.device) -> bool:
    """Whether this CPU run trains under bf16 autocast, recorded in run.json. ``auto`` chooses it where
    bf16 is native; a resumed ``auto`` run keeps the arithmetic it started with, wherever it resumes,
    so that a run stopped and resumed is the run it would have been."""
    if config.cpu_bf16 != "auto":
        chosen = bool(config.cpu_bf16)
    elif "cpu_bf16" in facts:
        chosen = bool(facts["cpu_bf16"])
    else:
        chosen = bfloat16_is_fast(device)
    facts["cpu_bf16"] = chosen
    return chosen


def _with_recorded_format(config: TrainConfig, facts: dict[str, Any]) -> TrainConfig:
    """A resumed ``data_format: auto`` run reads its data the way it started: the cache and the files
    give different pixels, and the free disk or memory that chose between them may have changed."""
    recorded = facts.get("data_format")
    if config.data_format != "auto" or recorded is None:
        return config
    return replace(config, data_format=recorded)


def _write_run_files(run: TrainingRun, facts: dict[str, Any], resume: bool) -> None:
    if not run.ctx.is_main:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_text(run.config.dump(), run.run_dir / "config.yaml")
    config, ctx = run.config, run.ctx
    facts.update({"run_dir": str(run.run_dir.resolve()), "processes": ctx.world_size, "device": str(run.device),
                  "global_batch": config.batch_size, "per_process_batch": config.batch_size // ctx.world_size,
                  "accumulation": config.accumulation, "lr": config.lr, "torch": torch.__version__})
    if run.device.type == "cpu" and not resume:
        # The instruction set the run started on: the same seed in float32 ended 1.2 points apart on an
        # AVX2 and an AVX-512 CPU (docs/results.md), and it sets the speed. Written at the start only, so
        # a run resumed elsewhere (or started before this was recorded) does not claim another CPU's.
        facts["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    atomic_write_text(json.dumps(facts, indent=2) + "\n", run.run_dir / "run.json")


def _announce(run: TrainingRun, data: ImageArrays | ImageFiles, teacher: Teacher | None, resumed: bool,
              start: dict[str, Any] | None) -> None:
    config, say = run.config, run.console.line
    if start and not resumed and "kind" in start:
        other = ("other classes" if start["classes_in_file"] == len(data.classes)
                 else f"{start['classes_in_file']} classes")
        head = (f"a new classifier for the data's {len(data.classes)} classes (the file's has {other})"
                if start["new_classifier"] else "its classifier kept")
        trains = {"head": "the classifier alone trains (linear probe)",
                  "all": "every layer trains" + (f", all but the classifier at {config.backbone_lr_scale:g}x the rate"
                                                 if config.backbone_lr_scale != 1 else "")}[config.finetune]
        norm = "the file's own" if config.normalize == "weights" else config.normalize
        say(f"starting from {start['file']} ({start['kind']}): {head}; {trains}; normalisation: {norm}")
    if run.autocast and run.device.type == "cpu":
        warning = slow_bfloat16_warning("cpu")
        if warning:  # only when asked for: auto chooses bf16 where it is native
            say(f"{warning}; drop --set cpu_bf16=true")
        elif config.cpu_bf16 == "auto" and not resumed:
            say("training under bf16 autocast: this CPU has native bf16 (--set cpu_bf16=false for float32)")
    if config.schedule == "multistep" and any(m >= run.total_steps
                                              for m in milestone_steps(config.milestones, run.total_steps)):
        # e.g. milestones given in steps, then the run shortened with --epochs: the lr never drops.
        say(f"warning: lr milestones {config.milestones} lie beyond this run's {run.total_steps:,} steps; "
            f"give them as fractions of the run instead, e.g. --set milestones=[0.5,0.75]")
    say(f"run {run.run_dir}: {run.spec.name} on {data.name} ({len(data):,} images), {run.total_steps:,} steps of "
        f"batch {config.batch_size} on {run.device}"
        + (f" x {run.ctx.world_size} processes" if run.ctx.enabled else "")
        + (f", distilling {teacher.name} ({config.teacher_mode}, {config.distill_weight:g} soft, "
           f"T={config.distill_temperature:g})" if teacher else "")
        + (f", resuming at step {run.state.step}" if resumed else ""))
