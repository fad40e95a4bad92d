"""The training loop: config -> model + data -> steps -> run directory.

Reads top to bottom: ``fit`` prepares data, model, optimizer and schedule, then runs epochs of
steps; at each epoch end it evaluates, logs and writes ``last.pt`` (and ``best.pt``). Everything a
resumed run needs (weights, optimizer, step, position in the epoch, partial-epoch sums, history)
is in the checkpoint, and every batch is a pure function of (seed, epoch, index), so on CPU an
interrupted-then-resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data import AugmentDefaults, DataOptions, EvalLoader, Normalizer, TrainLoader, load_dataset
from ..data.arrays import ImageArrays
from ..errors import ConfigError, CheckpointError
from ..fileio import atomic_write_text
from ..inference import bfloat16_is_fast
from ..fileio import sha256
from ..models.registry import resolve_spec
from ..models.resnet import NetSpec, ResNet
from . import distributed
from .averaging import WeightAverage, first_averaged_epoch
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distill import (ENSEMBLE_JOIN, Teacher, cached_teacher_logits, check_teacher, load_teacher, teacher_checkpoint,
                      teacher_sources, training_loss)
from .evaluate import evaluate
from .history import TensorBoard, write_history
from .interrupt import StopFlag
from .progress import Progress, format_seconds
from .schedules import milestone_steps, schedule_for

SYNC_EVERY = 25  # steps between host syncs (progress bar, NaN check): no per-step .item()
WARMUP_WINDOW = 10  # batches averaged when deciding the paper's ResNet-110 warm-up is over


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "finished" | "interrupted" | "diverged"
    history: list[dict[str, Any]]
    best_error: float | None
    message: str = ""


@dataclass
class Progression:
    """Where the run is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # next batch index within the epoch
    warming_up: bool = False
    best_error: float | None = None
    wall_time_s: float = 0.0
    # Sums over the current epoch's batches so far (float64 / int64 on the host at save time).
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps requested but MPS is not available")
    return torch.device(name)


def data_options(config: TrainConfig) -> DataOptions:
    return DataOptions(root=config.data_root, val_fraction=config.val_fraction, image_size=config.image_size,
                       channels=config.channels, strict=config.strict)


def model_spec(config: TrainConfig, data: ImageArrays) -> NetSpec:
    overrides = {"num_classes": len(data.classes), "in_channels": data.channels, **config.model_options}
    return resolve_spec(config.model, **overrides)


def init_from_checkpoint(path: str, data: ImageArrays) -> tuple[NetSpec, dict[str, torch.Tensor], str]:
    """Weights to start from, and the SHA-256 of their file (the run records it: the file may change
    later, as a bundled model's does). A different class count gets a fresh classifier (fine-tuning)."""
    source = load_checkpoint(path)
    spec, state = source.spec, dict(source.model_state)
    if spec.in_channels != data.channels:
        raise CheckpointError(f"{path}: model takes {spec.in_channels}-channel input, {data.name} has {data.channels}")
    if spec.num_classes != len(data.classes):
        spec = spec.with_overrides(num_classes=len(data.classes))
        state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    return spec, state, sha256(source.path)


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    if not config.no_decay_bn_bias:
        return [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    # BN scales/shifts and biases are 1-d: decaying them only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


def default_run_dir(config: TrainConfig) -> Path:
    data = Path(config.data).name or "data"
    model = Path(config.model).stem
    # Under torchrun every process (and every restart) must agree on the folder: use the run id.
    suffix = os.environ.get("TORCHELASTIC_RUN_ID") or datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model}-{data}-{suffix}"


def elastic_restart() -> bool:
    """True in a worker that torchrun restarted after a failure (it should resume)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def fit(config: TrainConfig, *, resume: bool = False, quiet: bool = False,
        should_stop: Callable[[int], bool] | None = None) -> RunResult:
    """Train per ``config`` into ``config.out``; with ``resume`` continue the run found there.

    Under torchrun every process calls this; rank 0 alone writes files and prints."""
    config.validate()
    device = select_device(config.device)
    ctx = distributed.setup(device.type)
    try:
        return _fit(config, device, ctx, resume, quiet, should_stop)
    finally:
        distributed.teardown(ctx)


def _fit(config: TrainConfig, device: torch.device, ctx: distributed.DistContext, resume: bool, quiet: bool,
         should_stop: Callable[[int], bool] | None) -> RunResult:
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if config.batch_size % (ctx.world_size * config.accumulation):
        raise ConfigError(f"batch_size {config.batch_size} does not split into {ctx.world_size} processes x "
                          f"{config.accumulation} micro-batches")
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if not resume and (run_dir / "last.pt").exists():
        # Never train over a user's run: its checkpoints would be replaced.
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    quiet = quiet or not ctx.is_main
    log = Progress(0, quiet)

    # ---- data ------------------------------------------------------------------------------
    train_data = load_dataset(config.data, config.train_split, data_options(config))
    eval_data = load_dataset(config.data, config.eval_split, data_options(config)) if config.eval_split else None
    checkpoint = load_checkpoint(run_dir / "last.pt") if resume else None
    normalizer = checkpoint.normalizer if checkpoint else Normalizer.fit(train_data.images, config.normalize)
    augment = None if config.augment else AugmentDefaults(pad=0, flip=False)
    loader = TrainLoader(train_data, config.batch_size, normalizer, augment=augment, seed=config.seed,
                         device=device, rank=ctx.rank, world_size=ctx.world_size, cutout_size=config.cutout)
    eval_loader = (EvalLoader(eval_data, config.eval_batch_size, normalizer, device=device, rank=ctx.rank,
                              world_size=ctx.world_size) if eval_data else None)

    # ---- model, optimizer, schedule --------------------------------------------------------
    torch.manual_seed(config.seed)
    if checkpoint:
        spec, state = checkpoint.spec, checkpoint.model_state
    elif config.init_from:
        spec, state, start_sha256 = init_from_checkpoint(config.init_from, train_data)
        config = dataclasses.replace(config, init_from_sha256=start_sha256)
    else:
        spec, state = model_spec(config, train_data), None
    model = ResNet(spec)
    if state is not None:
        model.load_state_dict(state, strict=checkpoint is not None)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, config)
    if checkpoint and checkpoint.optimizer_state:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    teacher = None
    if config.teacher:
        teacher, config, warning = _prepare_teacher(config, train_data, device, memory_format)
        if warning:
            log.line(warning)
    cached_logits = None
    if teacher is not None and config.teacher_mode == "cached":
        started = time.monotonic()
        cached_logits = cached_teacher_logits(teacher, loader.images, loader.augment.flip, device,
                                              config.eval_batch_size)
        agree = (cached_logits.argmax(1) == loader.labels).float().mean().item()
        log.line(f"teacher {teacher.source}: logits for {len(cached_logits):,} training images cached in "
                 f"{time.monotonic() - started:.0f} s (its top class is the label for {agree:.2%} of them)")
        teacher = dataclasses.replace(teacher, model=None)  # not needed again: free its memory
    # The teacher's own normalisation of each augmented batch, where it differs from the student's.
    teacher_normalizer = (None if teacher is None or cached_logits is not None or teacher.normalizer.same_as(normalizer)
                          else teacher.normalizer)
    train_module = distributed.wrap(model, ctx, device, config.sync_bn)
    forward = torch.compile(train_module) if config.compile else train_module
    use_amp = (config.amp and device.type == "cuda") or (config.cpu_bf16 and device.type == "cpu")
    if config.cpu_bf16 and device.type == "cpu" and not bfloat16_is_fast("cpu"):
        # Without AVX512_BF16 or AMX, oneDNN emulates bf16: a ResNet-20 step took 10x as long as in
        # float32 on a 2-core AVX2 EPYC (5.9 s against 0.58 s, batch 128). The run is still correct.
        log.line("warning: this CPU has no native bf16 arithmetic (AVX512_BF16 or AMX), so cpu_bf16 makes "
                 "training several times slower than float32 here; drop --set cpu_bf16=true")
    total_steps = config.iterations or math.ceil(config.epochs * len(loader))
    schedule = schedule_for(config, total_steps)

    average, first_average = None, 0
    if config.average_from is not None:
        first_average = first_averaged_epoch(config.average_from, total_steps / len(loader))
        average = (WeightAverage(model, checkpoint.average_state, checkpoint.average_count)
                   if checkpoint is not None and checkpoint.average_state is not None else WeightAverage(model))
        if first_average > math.ceil(total_steps / len(loader)):
            log.line(f"warning: average_from {config.average_from:g} lies beyond this run's "
                     f"{math.ceil(total_steps / len(loader))} epochs, so no weights will be averaged")

    state_now = Progression(**checkpoint.progress) if checkpoint else Progression(
        warming_up=config.warmup_until_error is not None)
    if checkpoint is not None and not ctx.is_main:
        # Saved partial-epoch sums are global; count them once (on rank 0).
        state_now.loss_sum, state_now.correct, state_now.seen = 0.0, 0, 0
    if checkpoint is not None and checkpoint.rng_state is not None:
        torch.set_rng_state(checkpoint.rng_state)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(config.dump(), run_dir / "config.yaml")
        atomic_write_text(json.dumps({"processes": ctx.world_size, "device": str(device),
                                      "global_batch": config.batch_size,
                                      "per_process_batch": config.batch_size // ctx.world_size,
                                      "accumulation": config.accumulation, "lr": config.lr,
                                      "torch": torch.__version__}, indent=2) + "\n", run_dir / "run.json")
    if config.schedule == "multistep" and any(m >= total_steps for m in milestone_steps(config.milestones, total_steps)):
        # e.g. milestones given in steps, then the run shortened with --epochs: the lr never drops.
        log.line(f"warning: lr milestones {config.milestones} lie beyond this run's {total_steps:,} steps; "
                 f"give them as fractions of the run instead, e.g. --set milestones=[0.5,0.75]")
    log.line(f"run {run_dir}: {spec.name} on {train_data.name} ({len(train_data):,} images), "
             f"{total_steps:,} steps of batch {config.batch_size} on {device}"
             + (f" x {ctx.world_size} processes" if ctx.enabled else "")
             + (f", distilling {teacher.source} ({config.teacher_mode}, {config.distill_weight:g} soft, "
                f"T={config.distill_temperature:g})"
                if teacher else "")
             + (f", resuming at step {state_now.step}" if checkpoint else ""))

    def checkpoint_of(weights: nn.Module, **training_state: Any) -> Checkpoint:
        return Checkpoint(spec=spec, classes=train_data.classes, normalizer=normalizer,
                          input_size=train_data.image_size, model_state=weights.state_dict(),
                          progress=state_now.__dict__.copy(), config=config.to_dict(),
                          trained_with_flips=loader.augment.flip, **training_state)

    def save(names: list[str]) -> None:
        if not ctx.is_main:
            return
        ckpt = checkpoint_of(model, optimizer_state=optimizer.state_dict(), rng_state=torch.get_rng_state(),
                             average_state=average.state_dict() if average is not None and average.count else None,
                             average_count=average.count if average is not None else 0)
        for name in names:
            save_checkpoint(ckpt, run_dir / name)

    micro = config.accumulation
    progress = Progress(total_steps, quiet)
    tensorboard = TensorBoard(run_dir, enabled=ctx.is_main)
    warm_window: deque[float] = deque(maxlen=WARMUP_WINDOW)
    status, message = "finished", ""
    session_start = time.monotonic()
    wall_at_start = state_now.wall_time_s
    lr = schedule(state_now.step, state_now.warming_up)

    def stop_now(local_request: bool) -> bool:
        # Under DDP every process must stop at the same step: agree at sync points only.
        if ctx.enabled:
            return state_now.step % SYNC_EVERY == 0 and distributed.any_true(local_request, ctx, device)
        return local_request

    with StopFlag() as stop:
        while state_now.step < total_steps:
            loss_sum = torch.tensor(state_now.loss_sum, dtype=torch.float64, device=device)
            correct = torch.tensor(state_now.correct, dtype=torch.int64, device=device)
            seen = torch.tensor(state_now.seen, dtype=torch.int64, device=device)
            epoch_started = time.monotonic() - state_now.train_time_s
            model.train()
            for batch in loader.epoch(state_now.epoch, state_now.batch, teacher_normalizer, cached_logits):
                x, y = batch[0], batch[1]
                # What the teacher gets: its own normalisation of the batch, the student's, or the
                # batch's rows of its cached logits.
                teacher_view = batch[2] if len(batch) == 3 else x
                lr = schedule(state_now.step, state_now.warming_up)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                wrong = torch.zeros((), dtype=torch.int64, device=device)
                for i in range(micro):
                    if micro == 1:
                        xs, ys, ts = x, y, teacher_view
                    else:
                        xs, ys, ts = x[i::micro], y[i::micro], teacher_view[i::micro]
                    sync = contextlib.nullcontext() if (i == micro - 1 or not ctx.enabled) else train_module.no_sync()
                    with sync:
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                            logits = forward(xs)
                            if teacher is None:
                                teacher_logits = None
                            elif cached_logits is not None:
                                teacher_logits = ts
                            else:
                                teacher_logits = teacher.logits(ts)
                            loss = training_loss(logits.float(), ys, config.label_smoothing, teacher_logits,
                                                 config.distill_weight, config.distill_temperature)
                        (loss / micro if micro > 1 else loss).backward()
                    wrong += (logits.argmax(1) != ys).sum()
                    loss_sum += loss.detach().double() * ys.numel()
                optimizer.step()
                correct += y.numel() - wrong
                seen += y.numel()
                state_now.step += 1
                state_now.batch += 1
                if state_now.warming_up:
                    warm_window.append(float(wrong) / y.numel())
                    if len(warm_window) == WARMUP_WINDOW and sum(warm_window) / WARMUP_WINDOW < config.warmup_until_error:
                        state_now.warming_up = False
                        log.line(f"warm-up over at step {state_now.step}: training error below "
                                 f"{config.warmup_until_error:.0%}, lr back to {config.lr}")
                if state_now.step % SYNC_EVERY == 0:
                    value = loss.item()
                    if stop_now(not math.isfinite(value)):
                        status, message = "diverged", f"loss became non-finite by step {state_now.step}"
                        break
                    elapsed = time.monotonic() - epoch_started
                    progress.update(state_now.step, state_now.epoch + 1,
                                    int(seen) * ctx.world_size / max(elapsed, 1e-9), value, lr)
                requested = stop.requested or (should_stop is not None and should_stop(state_now.step))
                if state_now.step >= total_steps or stop_now(requested):
                    break
            if status == "diverged":
                break
            train_time = time.monotonic() - epoch_started
            distributed.all_sum([loss_sum, correct, seen], ctx)
            epoch_done = state_now.batch >= len(loader) or state_now.step >= total_steps
            if not epoch_done:  # interrupted mid-epoch: keep the partial sums in the checkpoint
                state_now.loss_sum, state_now.correct, state_now.seen = float(loss_sum), int(correct), int(seen)
                state_now.train_time_s = train_time
                state_now.wall_time_s = wall_at_start + time.monotonic() - session_start
                save(["last.pt"])
                status, message = "interrupted", f"stopped at step {state_now.step}; resume with --resume {run_dir}"
                break
            train_loss = float(loss_sum) / max(1, int(seen))
            if not math.isfinite(train_loss):
                status, message = "diverged", f"training loss became {train_loss} in epoch {state_now.epoch + 1}"
                break
            row: dict[str, Any] = {
                "epoch": state_now.epoch + 1, "step": state_now.step, "lr": lr, "train_loss": train_loss,
                "train_error": 1.0 - int(correct) / max(1, int(seen)),
                "images_per_s": int(seen) / max(train_time, 1e-9), "epoch_time_s": train_time,
            }
            final = state_now.step >= total_steps
            if eval_loader is not None and ((state_now.epoch + 1) % config.eval_every == 0 or final):
                distributed.broadcast_buffers(model, ctx)
                result = evaluate(model, eval_loader, spec.num_classes, autocast=use_amp)
                distributed.all_sum(result.tensors(), ctx)
                row.update(eval_loss=result.loss, eval_error=result.error, eval_top5_error=result.top5_error)
            if average is not None and state_now.epoch + 1 >= first_average:
                average.add(model)
                # BN statistics from the epoch's own augmented batches, as training's running statistics
                # are: measured on unaugmented images instead, they cost the first ResNet-20 average
                # (one epoch, so the live weights) 2.1 points of validation accuracy (14.78% error against
                # 12.66%). Each process measures its share; rank 0's are then given to all.
                averaged = average.averaged_model(model, loader.epoch(state_now.epoch))
                distributed.broadcast_buffers(averaged, ctx)
                row["averaged_epochs"] = average.count
                if eval_loader is not None:
                    result = evaluate(averaged, eval_loader, spec.num_classes, autocast=use_amp)
                    distributed.all_sum(result.tensors(), ctx)
                    row.update(average_eval_loss=result.loss, average_eval_error=result.error,
                               average_eval_top5_error=result.top5_error)
            else:
                averaged = None
            state_now.wall_time_s = wall_at_start + time.monotonic() - session_start
            row["wall_time_s"] = state_now.wall_time_s
            state_now.history.append(row)
            state_now.epoch += 1
            state_now.batch = 0
            state_now.loss_sum, state_now.correct, state_now.seen, state_now.train_time_s = 0.0, 0, 0, 0.0
            improved = "eval_error" in row and (state_now.best_error is None or row["eval_error"] < state_now.best_error)
            if improved:
                state_now.best_error = row["eval_error"]
            if averaged is not None and ctx.is_main:
                # Before last.pt: a run killed between the two redoes this epoch and writes it again.
                # Its progress is the epoch's, history included: a card can tell which epochs it averages.
                save_checkpoint(checkpoint_of(averaged), run_dir / "averaged.pt")
            save(["last.pt", "best.pt"] if improved or (eval_loader is None and final) else ["last.pt"])
            if ctx.is_main:
                write_history(state_now.history, run_dir)
                tensorboard.log(row)
            progress.line(_epoch_line(row, total_steps))
            if not final and stop_now(stop.requested or (should_stop is not None and should_stop(state_now.step))):
                status, message = "interrupted", f"stopped at step {state_now.step}; resume with --resume {run_dir}"
                break
    tensorboard.close()
    if status == "diverged":
        message += "; the run stopped and its last good checkpoint is kept"
        log.line(f"error: {message}")
    elif status == "interrupted":
        log.line(message)
    elif ctx.is_main:
        finish(run_dir, spec, state_now, config)
    distributed.barrier(ctx)
    return RunResult(run_dir, status, state_now.history, state_now.best_error, message)


def _prepare_teacher(config: TrainConfig, data: ImageArrays, device: torch.device,
                     memory_format: torch.memory_format) -> tuple[Teacher, TrainConfig, str | None]:
    """Load and check the teacher. A new run records the teacher's file (absolute) and SHA-256 in its
    config; a resumed one must find the same file there, or it would distil from another network."""
    sources = teacher_sources(config.teacher)
    try:
        checkpoints = [teacher_checkpoint(source) for source in sources]
    except CheckpointError as exc:
        if len(sources) == 1:
            raise
        raise CheckpointError(f"{exc} (read {config.teacher} as an ensemble of {len(sources)}: "
                              f"{', '.join(sources)})") from None
    warnings = [check_teacher(c, source, data, config.eval_split, config.val_fraction)
                for source, c in zip(sources, checkpoints)]
    warning = "\n".join(dict.fromkeys(w for w in warnings if w)) or None  # each distinct warning once
    teacher = load_teacher(config.teacher, checkpoints, device, memory_format)
    if config.teacher_sha256 is None:
        where = [str(c.path.resolve()) if Path(source).exists() else source for source, c in zip(sources, checkpoints)]
        if len(where) > 1 and any(ENSEMBLE_JOIN in w for w in where):
            # The run records the members +-joined; a + inside one would split it wrongly on resume.
            raise ConfigError(f"teacher {config.teacher}: an ensemble member's path contains '{ENSEMBLE_JOIN}' "
                              f"({next(w for w in where if ENSEMBLE_JOIN in w)}); rename or link it")
        return teacher, dataclasses.replace(config, teacher=ENSEMBLE_JOIN.join(where),
                                            teacher_sha256=teacher.sha256), warning
    recorded, now = config.teacher_sha256.split(ENSEMBLE_JOIN), teacher.sha256.split(ENSEMBLE_JOIN)
    if recorded != now:
        changed = [f"{source} (SHA-256 {new[:12]}..., the run recorded {old[:12]}...)"
                   for source, old, new in zip(sources, recorded, now) if old != new]
        raise CheckpointError(f"teacher {', '.join(changed) or config.teacher} has changed since this run started")
    return teacher, config, warning


def _epoch_line(row: dict[str, Any], total_steps: int) -> str:
    text = (f"epoch {row['epoch']:>3}  step {row['step']:>6}/{total_steps}  loss {row['train_loss']:.4f}  "
            f"train err {100 * row['train_error']:5.2f}%")
    if "eval_error" in row:
        text += f"  eval err {100 * row['eval_error']:5.2f}%"
    if "average_eval_error" in row:
        text += f"  averaged ({row['averaged_epochs']}) {100 * row['average_eval_error']:5.2f}%"
    return text + f"  {row['images_per_s']:.0f} img/s  {format_seconds(row['wall_time_s'])}"


def finish(run_dir: Path, spec: NetSpec, state: Progression, config: TrainConfig) -> None:
    """The figure and the summary of a finished run."""
    from ..plots import error_curves

    history = state.history
    if history:
        error_curves({spec.name: history}, run_dir / "curves.png", f"{spec.name} on {config.data}")
    last = history[-1] if history else {}
    summary = {
        "model": spec.name, "data": config.data, "recipe": config.recipe, "steps": state.step,
        "epochs": len(history), "final_train_error": last.get("train_error"),
        "final_eval_error": last.get("eval_error"), "best_eval_error": state.best_error,
        "eval_split": config.eval_split, "wall_time_s": state.wall_time_s,
        "images_per_s": (sum(r["images_per_s"] for r in history) / len(history)) if history else None,
        "seed": config.seed,
        "averaged_epochs": last.get("averaged_epochs"), "average_eval_error": last.get("average_eval_error"),
    }
    atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    lines = [f"# {spec.name} on {config.data} ({config.recipe} recipe)", "",
             f"- steps: {state.step:,} ({len(history)} epochs), batch {config.batch_size}, seed {config.seed}",
             f"- wall time: {format_seconds(state.wall_time_s)}"]
    if last.get("eval_error") is not None:
        lines.append(f"- final {config.eval_split} error: {100 * last['eval_error']:.2f}%"
                     f" (best {100 * state.best_error:.2f}%)")
    if last.get("average_eval_error") is not None:
        lines.append(f"- {config.eval_split} error of the weights averaged over the last {last['averaged_epochs']} "
                     f"epochs (averaged.pt): {100 * last['average_eval_error']:.2f}%")
    if last:
        lines.append(f"- final training error: {100 * last['train_error']:.2f}%")
    lines += ["", "![error curves](curves.png)", ""]
    atomic_write_text("\n".join(lines), run_dir / "summary.md")


def resume_run(run_dir: str | Path, *, quiet: bool = False,
               should_stop: Callable[[int], bool] | None = None) -> RunResult:
    """Continue the run in ``run_dir`` with the config it was started with."""
    from .config import TrainConfig as _Config, apply, load_yaml

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml)")
    if not (run_dir / "last.pt").exists():
        raise CheckpointError(f"{run_dir}: no last.pt to resume from")
    config = apply(_Config(), load_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    config.out = str(run_dir)
    return fit(config.validate(), resume=True, quiet=quiet, should_stop=should_stop)
