"""Experiment members: training runs that differ only in the network (or seed), trained into
``<experiment>/members/<name>/`` and read back from there.

A member whose folder holds ``summary.json`` is finished and is never trained again; one with a
``last.pt`` is resumed; any other is started. So an experiment can be completed across machines and
sessions from its members' *metrics* alone (``metrics.jsonl``, ``summary.json``, ``config.yaml``,
``run.json``: what docs/evidence/ commits, without checkpoints), and its report rebuilt from them.

Members that share a name share a folder: ``resnet20-seed0`` is the same run whether ``table6``,
``degradation`` or ``shortcuts`` asked for it, so experiments pointed at one folder train it once.
Before anything trains, each existing member's recorded settings are compared with the ones asked
for: a folder started under another budget or recipe is refused instead of silently mixed.

With ``jobs > 1`` members run as parallel processes, each with ``threads / jobs`` CPU threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..cores import usable_cores
from ..errors import ConfigError, ReslabError
from ..fileio import atomic_write_text
from ..models.registry import resolve_spec
from ..train.config import TrainConfig, resolve
from ..train.history import read_history
from ..train.interrupt import StopFlag, say_while_stopping
from ..train.loop import fit, resume_run
from .protocols import protocol

POLL_S = 1.0  # how often a parallel experiment checks whether a member finished
STOP_WAIT_S = 60  # how long an interrupted member may take to write its checkpoint


@dataclass(frozen=True)
class Member:
    name: str
    group: str  # panel / row group: "plain", "resnet", "A", ...
    depth: int
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)


def family_net(kind: str, depth: int, **options: Any) -> dict[str, Any]:
    """Overrides naming a CIFAR-family net of any 6n+2 depth ("resnet"/"plain" families)."""
    return {"model": kind, "model_options": {"depth": depth, **options}}


@dataclass
class ExperimentSettings:
    out: Path
    data: str = "cifar10"
    data_root: str | None = None
    budget: float = 1.0  # fraction of the recipe's length: paper 64k iterations, fast 40 epochs
    recipe: str = "paper"
    eval_split: str = "val"
    jobs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # any TrainConfig overrides
    quiet: bool = True
    train: bool = True  # False: report on the finished members only, train nothing
    protocol: str | None = None  # the named protocol (protocols.py) that chose recipe and budget, if any

    def overrides(self) -> dict[str, Any]:
        if not 0 < self.budget <= 1:
            raise ConfigError(f"--budget must be in (0, 1], got {self.budget}")
        values: dict[str, Any] = {"data": self.data, "eval_split": self.eval_split}
        if self.data_root:
            values["data_root"] = self.data_root
        # The paper recipe counts iterations, the fast one epochs (fractions allowed); milestones
        # (fractions of the run) and one-cycle phases scale with the length. A recipe's length is the
        # same for every model. A length set explicitly (--set iterations/epochs) wins outright.
        length = resolve(self.recipe)
        if "iterations" in self.extra:
            pass
        elif "epochs" in self.extra:  # as `reslab train --epochs`: epochs replace the recipe's iterations
            values.update(iterations=None)
        elif length.iterations:
            values.update(iterations=max(1, round(length.iterations * self.budget)), epochs=None)
        elif length.epochs:
            values.update(epochs=length.epochs * self.budget, iterations=None)
        fixed = protocol(self.protocol).settings if self.protocol else {}
        return {**values, **fixed, **self.extra}  # --set wins over the protocol


def member_dir(settings: ExperimentSettings, member: Member) -> Path:
    return settings.out / "members" / member.name


def member_config(settings: ExperimentSettings, member: Member) -> TrainConfig:
    values = {**settings.overrides(), "seed": member.seed, **member.overrides,
              "out": str(member_dir(settings, member))}
    if settings.jobs > 1:
        values["threads"] = max(1, usable_cores() // settings.jobs)
    return resolve(settings.recipe, overrides=values)


def member_status(run_dir: Path) -> str:
    if (run_dir / "summary.json").exists():
        return "done"
    if (run_dir / "last.pt").exists():
        return "resume"
    return "new"


# How and where a member ran, not what it learned: these may differ between the sessions (and machines)
# that complete one experiment. cpu_bf16 is among them because its default follows the CPU, and a
# matched pair (ResNet-20, short protocol, seed 0) ended 0.44 points apart, within the seeds' spread
# (docs/results.md); each member's run.json records the arithmetic it trained in.
_WHERE_NOT_WHAT = ("out", "threads", "data_root", "device", "compile", "cpu_bf16")


def check_same_settings(settings: ExperimentSettings, member: Member, config: TrainConfig) -> None:
    """Refuse a member folder that was started with other training settings than ``config``'s."""
    recorded = member_dir(settings, member) / "config.yaml"
    if not recorded.exists():
        return
    before = resolve(file=recorded).to_dict()
    now = config.to_dict()
    changed = [k for k in now if k not in _WHERE_NOT_WHAT and before.get(k) != now[k]]
    if changed:
        what = ", ".join(f"{k} {before.get(k)!r} then, {now[k]!r} now" for k in changed[:3])
        raise ConfigError(f"{recorded.parent} was trained with other settings ({what}); "
                          f"rerun with the settings it was started with, or use another --out")


def arithmetic(run_dir: Path) -> str:
    """How a member computed: its device and bf16 autocast or float32, from run.json (on a CUDA device,
    whose autocast follows ``amp``, from config.yaml too), and on a CPU the instruction set it started
    on where recorded ("float32 on cpu (AVX2)"). "not recorded" where the files do not say."""
    try:
        facts = json.loads((run_dir / "run.json").read_text())
        device = str(facts["device"]).split(":")[0]
        if device == "cpu":
            bf16 = bool(facts.get("cpu_bf16", False))  # runs made before cpu_bf16 existed trained in float32
        elif device == "cuda":
            bf16 = resolve(file=run_dir / "config.yaml").amp
        else:  # training autocasts on CPU and CUDA only
            bf16 = False
    except (OSError, ValueError, TypeError, KeyError, ReslabError):  # missing, corrupt or not an object
        return "not recorded"
    capability = facts.get("cpu_capability") if device == "cpu" else None
    return f"{'bf16 autocast' if bf16 else 'float32'} on {device}" + (f" ({capability})" if capability else "")


OnDone = Callable[[Member, Path], None]


def run_members(settings: ExperimentSettings, members: list[Member],
                on_done: OnDone | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train every member that is not finished (unless ``settings.train`` is False); return the
    per-epoch history of each finished member (a member not finished is left out).

    ``on_done(member, run_dir)`` measures something from a finished member's weights. It is called
    as each member finishes (so a session that ends mid-experiment keeps it for those members), and
    again for every finished member at the end (so members finished elsewhere get it too, where their
    checkpoints are at hand): it must do its work once, and skip a member whose checkpoints are gone.
    """
    configs = {m.name: member_config(settings, m) for m in members}
    for m in members:
        check_same_settings(settings, m, configs[m.name])
        # A network that cannot be built (depth 21) is refused now, not after the members before it trained.
        resolve_spec(configs[m.name].model, **configs[m.name].model_options)
    pending = [m for m in members if member_status(member_dir(settings, m)) != "done"]
    if settings.train and pending:
        settings.out.mkdir(parents=True, exist_ok=True)
        if settings.jobs <= 1:
            _run_one_by_one(settings, pending, configs, on_done)
        else:
            _run_parallel(settings, pending, configs, on_done)
    done = [m for m in members if member_status(member_dir(settings, m)) == "done"]
    if not settings.train and not done:  # most likely a mistyped --out: say so instead of an empty report
        raise ConfigError(f"nothing to report: no finished member of this experiment under {settings.out / 'members'}")
    if on_done:
        for m in done:
            on_done(m, member_dir(settings, m))
    return {m.name: read_history(member_dir(settings, m)) for m in done}


def _run_one_by_one(settings: ExperimentSettings, pending: list[Member], configs: dict,
                    on_done: OnDone | None) -> None:
    for m in pending:
        run_dir = member_dir(settings, m)
        if not settings.quiet:
            print(f"[{m.name}] {'resuming' if member_status(run_dir) == 'resume' else 'training'}", flush=True)
        if member_status(run_dir) == "resume":
            result = resume_run(run_dir, quiet=settings.quiet)
        else:
            result = fit(configs[m.name], quiet=settings.quiet)
        if result.status == "interrupted":  # Ctrl-C: saved; rerunning the experiment resumes it
            raise KeyboardInterrupt
        if result.status != "finished":
            raise ConfigError(f"member {m.name} {result.status}: {result.message}")
        if on_done:
            on_done(m, run_dir)


def _run_parallel(settings: ExperimentSettings, pending: list[Member], configs: dict,
                  on_done: OnDone | None = None) -> None:
    """Run members as subprocesses, ``jobs`` at a time, starting the next one as soon as a slot frees.

    The deepest members start first (longest job first), so the shallow ones fill in beside them
    instead of leaving one slot idle at the end. Each member's stderr goes to its run folder.
    """
    queue = sorted(pending, key=lambda m: -m.depth)
    running: list[tuple[Member, subprocess.Popen, Any, int]] = []
    failures: list[str] = []
    # While members run, Ctrl-C only sets the flag and _drive raises KeyboardInterrupt where it looks,
    # so the interrupt cannot vanish inside a destructor (a Popen or file being collected).
    try:
        with StopFlag() as stop:
            _drive(settings, queue, running, configs, failures, stop, on_done)
    except BaseException:  # interrupted (Ctrl-C) or failed to start one: stop the others, each checkpoints and exits
        try:
            _stop_members(running, settings.quiet)
        finally:  # also after a second Ctrl-C while stopping
            _report_failures(failures)  # an interruption skips the ConfigError below that would name them
        raise
    if stop.requested:  # pressed as the last member finished: still an interruption, as the user meant
        _report_failures(failures)
        raise KeyboardInterrupt
    if failures:
        raise ConfigError(_failures_message(failures))


def _failures_message(failures: list[str]) -> str:
    return "members failed: " + "; ".join(failures)


def _report_failures(failures: list[str]) -> None:
    if failures:  # before the interruption ends the experiment, which would hide them
        say_while_stopping(_failures_message(failures))


def _stop_members(running: list, quiet: bool) -> None:
    """SIGINT each running member (it saves a checkpoint and exits) and wait for all, STOP_WAIT_S at most
    in all; a member still running then, or any at all after another Ctrl-C, is killed."""
    alive = [entry for entry in running if entry[1].poll() is None]
    try:
        if alive and not quiet:
            say_while_stopping(f"stopping {len(alive)} member(s) at their next step (Ctrl-C again kills them)")
        for _, proc, _, _ in alive:
            proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        for _, proc, _, _ in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:  # also on a second Ctrl-C: leave no member running without its experiment
        for _, proc, err, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()


def _drive(settings: ExperimentSettings, queue: list[Member], running: list, configs: dict,
           failures: list[str], stop: StopFlag, on_done: OnDone | None = None) -> None:
    """Start queued members while slots are free; collect those that finish (removing them from ``running``).
    Raises KeyboardInterrupt once ``stop`` is requested."""
    while queue or running:
        if stop.requested:
            raise KeyboardInterrupt
        while queue and len(running) < settings.jobs and not stop.requested:
            m = queue.pop(0)
            run_dir = member_dir(settings, m)
            if member_status(run_dir) == "resume":
                args = ["--resume", str(run_dir)]
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                config_file = run_dir / "member.yaml"
                atomic_write_text(configs[m.name].dump(), config_file)
                args = ["--config", str(config_file)]
            command = [sys.executable, "-m", "reslab", "train", *args, "--quiet"]
            err = open(run_dir / "stderr.log", "a+", errors="replace")
            start = err.seek(0, os.SEEK_END)  # this attempt's messages begin here (a resumed member appends)
            try:
                # Own session: a Ctrl-C reaches only this process, which forwards exactly one SIGINT
                # (a trainer's second SIGINT would abort it before it saves).
                proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            except OSError:
                err.close()
                raise
            running.append((m, proc, err, start))
        finished = [entry for entry in running if entry[1].poll() is not None]
        if not finished:
            time.sleep(POLL_S)
            continue
        for entry in finished:
            running.remove(entry)
            m, proc, err, start = entry
            if proc.returncode != 0:
                err.seek(start)
                last_line = err.read().strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
                failures.append(f"{m.name}: {last_line[0]}")
            err.close()
            if proc.returncode == 0 and on_done:
                on_done(m, member_dir(settings, m))
