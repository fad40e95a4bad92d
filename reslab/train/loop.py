"""The training loop: set up, then epochs of steps, then each epoch's end.

``fit`` reads as the table of contents; ``train_step`` is one optimizer step, ``end_epoch`` evaluates,
logs and writes ``last.pt`` (and ``best.pt``). Everything a resumed run needs (weights, optimizer,
step, position in the epoch, partial-epoch sums, history) is in the checkpoint, and every batch is a
pure function of (seed, epoch, index), so on CPU an interrupted-then-resumed run reproduces the
uninterrupted one exactly. What the loop trains with is built in reslab/train/setup.py; the loss is
the run's objective (reslab/train/objective.py); optional parts join through reslab/train/extras.py.
"""

from __future__ import annotations

import math
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import save_checkpoint
from ..data.loader import Batch
from ..errors import CheckpointError
from . import distributed
from .config import TrainConfig, apply, load_yaml
from .history import write_history
from .interrupt import StopFlag
from .report import epoch_line, write_summary
from .setup import SYNC_EVERY, TrainingRun, prepare_run, select_device
from .state import EpochSums

WARMUP_WINDOW = 10  # batches averaged when deciding the paper's ResNet-110 warm-up is over


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "finished" | "interrupted" | "diverged"
    history: list[dict[str, Any]]
    best_error: float | None
    message: str = ""
    stopped_by: int | None = None  # the signal that stopped an interrupted run (SIGINT, SIGTERM), if any


def fit(config: TrainConfig, *, resume: bool = False, quiet: bool = False,
        should_stop: Callable[[int], bool] | None = None) -> RunResult:
    """Train per ``config`` into ``config.out``; with ``resume`` continue the run found there.

    Under torchrun every process calls this; rank 0 alone writes files and prints."""
    config.validate()
    device = select_device(config.device)
    ctx = distributed.setup(device.type)
    try:
        run = prepare_run(config, device, ctx, resume, quiet)
        try:
            with StopFlag((signal.SIGINT, signal.SIGTERM)) as stop:
                asked = lambda: stop.requested or (should_stop is not None and should_stop(run.state.step))  # noqa: E731
                status, message = train_epochs(run, asked)
            result = conclude(run, status, message)
            result.stopped_by = stop.received if status == "interrupted" else None
            return result
        finally:
            run.tensorboard.close()
            run.lock.release()
    finally:
        distributed.teardown(ctx)


def train_epochs(run: TrainingRun, asked: Callable[[], bool]) -> tuple[str, str]:
    """Epochs of steps until the run ends, is asked to stop, or diverges: (status, message)."""
    warm_window: deque[float] = deque(maxlen=WARMUP_WINDOW)
    while run.state.step < run.total_steps:
        sums = EpochSums(run.state, run.device, count_saved=run.ctx.is_main)
        if not train_epoch(run, sums, asked, warm_window):
            return "diverged", f"loss became non-finite by step {run.state.step}"
        distributed.all_sum(sums.tensors(), run.ctx)
        if run.state.batch < len(run.loader) and run.state.step < run.total_steps:
            sums.keep_in(run.state)  # stopped mid-epoch: the checkpoint keeps the partial sums
            run.state.wall_time_s = run.wall_time()
            save_checkpoints(run, ["last.pt"])
            return "interrupted", f"stopped at step {run.state.step}; resume with --resume {run.run_dir}"
        if not math.isfinite(sums.mean_loss):
            return "diverged", f"training loss became {sums.mean_loss} in epoch {run.state.epoch + 1}"
        end_epoch(run, sums)
        if run.state.step < run.total_steps and run.agree(asked()):
            return "interrupted", f"stopped at step {run.state.step}; resume with --resume {run.run_dir}"
    return "finished", ""


def train_epoch(run: TrainingRun, sums: EpochSums, asked: Callable[[], bool], warm_window: deque[float]) -> bool:
    """The epoch's steps from where the run is, until its end or a stop request; False if the loss diverged."""
    started = time.monotonic() - run.state.train_time_s
    run.model.train()
    for batch in run.loader.epoch(run.state.epoch, run.state.batch):
        loss, wrong = train_step(run, batch, sums)
        if run.state.warming_up:
            end_warmup_when_learning(run, float(wrong) / batch.labels.numel(), warm_window)
        if run.state.step % SYNC_EVERY == 0:
            value = loss.item()
            if run.agree(not math.isfinite(value)):
                return False
            elapsed = time.monotonic() - started
            run.console.bar(run.state.step, run.state.epoch + 1, int(sums.seen) * run.ctx.world_size / max(elapsed, 1e-9),
                            value, run.last_lr)
        if run.state.step >= run.total_steps or run.agree(asked()):
            break
    run.state.train_time_s = time.monotonic() - started
    return True


def train_step(run: TrainingRun, batch: Batch, sums: EpochSums) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``batch`` (in ``accumulation`` micro-batches): the last micro-batch's loss
    and the count of examples the network got wrong, both left on the device."""
    lr = run.schedule(run.state.step, run.state.warming_up)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # a smaller rate for a backbone (train/finetune.py)
    run.optimizer.zero_grad(set_to_none=True)
    micro = run.config.accumulation
    wrong = torch.zeros((), dtype=torch.int64, device=run.device)
    for i in range(micro):
        part = batch.part(i, micro)
        # Under DDP gradients are summed across processes once, on the last micro-batch.
        with distributed.sync_gradients(run.forward, run.ctx, i == micro - 1):
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.autocast):
                logits = run.forward(part.images)
                loss = run.objective(logits.float(), part)
            (loss / micro if micro > 1 else loss).backward()
        wrong += (logits.argmax(1) != part.labels).sum()
        sums.loss += loss.detach().double() * part.labels.numel()
    run.optimizer.step()
    sums.correct += batch.labels.numel() - wrong
    sums.seen += batch.labels.numel()
    run.state.step += 1
    run.state.batch += 1
    run.last_lr = lr
    return loss, wrong


def end_warmup_when_learning(run: TrainingRun, batch_error: float, window: deque[float]) -> None:
    """Paper Sec. 4.2: the warm-up rate holds until the training error is below the threshold (mean of
    the last WARMUP_WINDOW batches, so one lucky batch does not end it)."""
    window.append(batch_error)
    threshold = run.config.warmup_until_error
    if len(window) == WARMUP_WINDOW and sum(window) / WARMUP_WINDOW < threshold:
        run.state.warming_up = False
        run.console.line(f"warm-up over at step {run.state.step}: training error below {threshold:.0%}, "
                         f"lr back to {run.config.lr}")


def end_epoch(run: TrainingRun, sums: EpochSums) -> None:
    """Metrics of the finished epoch (evaluation, optional parts), then the checkpoints and metric files."""
    state, config = run.state, run.config
    final = state.step >= run.total_steps
    row: dict[str, Any] = {
        "epoch": state.epoch + 1, "step": state.step, "lr": run.last_lr, "train_loss": sums.mean_loss,
        "train_error": sums.error, "images_per_s": int(sums.seen) / max(state.train_time_s, 1e-9),
        "epoch_time_s": state.train_time_s,
    }
    if run.eval_loader is not None and ((state.epoch + 1) % config.eval_every == 0 or final):
        row.update(run.evaluate(run.model))
    for extra in run.extras:
        extra.end_of_epoch(run, row)
    state.wall_time_s = run.wall_time()
    row["wall_time_s"] = state.wall_time_s
    state.history.append(row)
    state.start_next_epoch()
    improved = "eval_error" in row and (state.best_error is None or row["eval_error"] < state.best_error)
    if improved:
        state.best_error = row["eval_error"]
    if run.ctx.is_main:
        for extra in run.extras:
            extra.write_files(run)
    save_checkpoints(run, ["last.pt", "best.pt"] if improved or (run.eval_loader is None and final) else ["last.pt"])
    if run.ctx.is_main:
        write_history(state.history, run.run_dir)
        run.tensorboard.log(row)
    run.console.line(epoch_line(row, run.total_steps))


def save_checkpoints(run: TrainingRun, names: list[str]) -> None:
    """The run as it is now, with what a resumed run needs to go on (rank 0 writes)."""
    if not run.ctx.is_main:
        return
    training_state: dict[str, Any] = {"optimizer_state": run.optimizer.state_dict(), "rng_state": torch.get_rng_state()}
    for extra in run.extras:
        training_state.update(extra.checkpoint_fields())
    checkpoint = run.checkpoint_of(run.model, **training_state)
    for name in names:
        save_checkpoint(checkpoint, run.run_dir / name)


def conclude(run: TrainingRun, status: str, message: str) -> RunResult:
    if status == "diverged":
        kept = (run.run_dir / "last.pt").exists()
        message += ("; the run stopped and its last good checkpoint is kept" if kept else
                    "; the run stopped before its first checkpoint, so there is nothing to resume: lower the "
                    "learning rate and start again")
        run.console.line(f"error: {message}")
    elif status == "interrupted":
        run.console.line(message)
    elif run.ctx.is_main:
        write_summary(run)
    distributed.barrier(run.ctx)
    return RunResult(run.run_dir, status, run.state.history, run.state.best_error, message)


def resume_run(run_dir: str | Path, *, quiet: bool = False,
               should_stop: Callable[[int], bool] | None = None) -> RunResult:
    """Continue the run in ``run_dir`` with the config it was started with."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml)")
    if not (run_dir / "last.pt").exists():
        raise CheckpointError(f"{run_dir}: no last.pt to resume from")
    config = apply(TrainConfig(), load_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    config.out = str(run_dir)
    return fit(config.validate(), resume=True, quiet=quiet, should_stop=should_stop)
