"""Experiments made of several training runs ("members") with the identical recipe and data order.

- degradation: plain and residual nets of each depth (paper Fig. 1 and Fig. 6)
- table6: residual nets of each depth over several seeds (paper Table 6)
- shortcuts: options A, B, C and plain at one depth (paper Sec. 3.3 / Table 3, on CIFAR)

Each member trains into ``<experiment>/members/<name>/``. Running the experiment again skips members
that finished and resumes those that were interrupted. With ``jobs > 1`` members run as parallel
processes, each with ``threads / jobs`` CPU threads.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..models.registry import PAPER_ERRORS
from ..plots import error_curve_panels, error_curves
from ..tables import format_table
from ..train.config import resolve
from ..train.history import read_history
from ..train.interrupt import StopFlag, say_while_stopping
from ..train.loop import fit, resume_run
from ..train.schedules import milestone_steps

POLL_S = 1.0  # how often a parallel experiment checks whether a member finished
STOP_WAIT_S = 60  # how long an interrupted member may take to write its checkpoint


@dataclass(frozen=True)
class Member:
    name: str
    group: str  # panel / row group: "plain", "resnet", "A", ...
    depth: int
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)


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
        return {**values, **self.extra}


def _model(kind: str, depth: int, **options: Any) -> dict[str, Any]:
    """Overrides naming a CIFAR-family net of any 6n+2 depth ("resnet"/"plain" families)."""
    return {"model": kind, "model_options": {"depth": depth, **options}}


def _member_dir(settings: ExperimentSettings, member: Member) -> Path:
    return settings.out / "members" / member.name


def _member_config(settings: ExperimentSettings, member: Member):
    values = {**settings.overrides(), "seed": member.seed, **member.overrides,
              "out": str(_member_dir(settings, member))}
    if settings.jobs > 1:
        values["threads"] = max(1, (os.cpu_count() or 1) // settings.jobs)
    return resolve(settings.recipe, overrides=values)


def _status(run_dir: Path) -> str:
    if (run_dir / "summary.json").exists():
        return "done"
    if (run_dir / "last.pt").exists():
        return "resume"
    return "new"


def run_members(settings: ExperimentSettings, members: list[Member]) -> dict[str, list[dict[str, Any]]]:
    """Train every member that is not finished; return each member's per-epoch history."""
    settings.out.mkdir(parents=True, exist_ok=True)
    configs = {m.name: _member_config(settings, m) for m in members}
    pending = [m for m in members if _status(_member_dir(settings, m)) != "done"]
    if settings.jobs <= 1:
        for m in pending:
            run_dir = _member_dir(settings, m)
            if not settings.quiet:
                print(f"[{m.name}] {'resuming' if _status(run_dir) == 'resume' else 'training'}", flush=True)
            if _status(run_dir) == "resume":
                result = resume_run(run_dir, quiet=settings.quiet)
            else:
                result = fit(configs[m.name], quiet=settings.quiet)
            if result.status == "interrupted":  # Ctrl-C: saved; rerunning the experiment resumes it
                raise KeyboardInterrupt
            if result.status != "finished":
                raise ConfigError(f"member {m.name} {result.status}: {result.message}")
    else:
        _run_parallel(settings, pending, configs)
    return {m.name: read_history(_member_dir(settings, m)) for m in members}


def _run_parallel(settings: ExperimentSettings, pending: list[Member], configs: dict) -> None:
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
            _drive(settings, queue, running, configs, failures, stop)
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
           failures: list[str], stop: StopFlag) -> None:
    """Start queued members while slots are free; collect those that finish (removing them from ``running``).
    Raises KeyboardInterrupt once ``stop`` is requested."""
    while queue or running:
        if stop.requested:
            raise KeyboardInterrupt
        while queue and len(running) < settings.jobs and not stop.requested:
            m = queue.pop(0)
            run_dir = _member_dir(settings, m)
            if _status(run_dir) == "resume":
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


def _final(history: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in history if row.get(key) is not None]
    return values[-1] if values else None


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _budget_note(settings: ExperimentSettings) -> str:
    config = resolve(settings.recipe, overrides=settings.overrides())
    explicit = "iterations" in settings.extra or "epochs" in settings.extra  # then the budget did not apply
    budget = f" (budget {settings.budget:g})" if settings.budget < 1 and not explicit else ""
    if settings.recipe == "paper" and config.iterations and not explicit:
        drops = " and ".join(f"{m:,}" for m in milestone_steps(config.milestones, config.iterations))
        return (f"Schedule: the paper's (Sec. 4.2) at budget {settings.budget:g}: {config.iterations:,} iterations, "
                f"lr /10 at {drops}"
                + (" (REDUCED BUDGET: the paper trains 64,000 iterations)" if settings.budget < 1 else "")
                + f". Data: {settings.data}, evaluated on its {settings.eval_split} split.")
    length = f"{config.iterations:,} iterations" if config.iterations else f"{config.epochs:g} epochs"
    return (f"Recipe: {settings.recipe}, {length}{budget}. "
            f"Data: {settings.data}, evaluated on its {settings.eval_split} split.")


def _write_results(settings: ExperimentSettings, name: str, rows: list[list[Any]], headers: list[str],
                   histories: dict[str, list[dict[str, Any]]], figures: list[str], intro: str, extra: str = "") -> Path:
    table = format_table(headers, rows, markdown=True)
    report = [f"# {name}", "", intro, "", _budget_note(settings), "", table, ""]
    report += [f"![{f}]({f})" for f in figures]
    if extra:
        report += ["", extra]
    atomic_write_text("\n".join(report) + "\n", settings.out / "report.md")
    atomic_write_text(table + "\n", settings.out / "table.md")
    atomic_write_text(json.dumps({"experiment": name, "settings": {k: str(v) for k, v in settings.__dict__.items()},
                                  "rows": rows, "headers": headers, "histories": histories}, indent=1) + "\n",
                      settings.out / "results.json")
    return settings.out / "report.md"


def degradation(settings: ExperimentSettings, depths: list[int], seed: int = 0) -> Path:
    members = [Member(f"{kind}{d}", kind, d, seed, _model(kind, d)) for kind in ("plain", "resnet") for d in depths]
    histories = run_members(settings, members)
    panels = [(title, {m.name: histories[m.name] for m in members if m.group == kind})
              for kind, title in (("plain", "plain networks"), ("resnet", "ResNets"))]
    error_curve_panels(panels, settings.out / "figure6.png")
    figures = ["figure6.png"]
    if "plain20" in histories and "plain56" in histories:
        error_curves({"plain-20": histories["plain20"], "plain-56": histories["plain56"]},
                     settings.out / "figure1.png", "plain-20 vs plain-56 (paper Fig. 1)")
        figures.append("figure1.png")
    rows = []
    for d in depths:
        p, r = histories[f"plain{d}"], histories[f"resnet{d}"]
        paper = PAPER_ERRORS.get(f"resnet{d}", (None, None))[0]
        rows.append([d, _pct(_final(p, "train_error")), _pct(_final(p, "eval_error")), _pct(_final(r, "train_error")),
                     _pct(_final(r, "eval_error")), "" if paper is None else f"{paper:.2f}"])
    verdict = _degradation_verdict(depths, histories)
    return _write_results(settings, "Degradation: plain vs residual (paper Fig. 1, Fig. 6)", rows,
                          ["depth", "plain train err %", "plain eval err %", "ResNet train err %", "ResNet eval err %",
                           "paper ResNet test err %"], histories, figures,
                          "Plain and residual networks of each depth, identical recipe, seed and data order.", verdict)


def _degradation_verdict(depths: list[int], histories: dict[str, list[dict[str, Any]]]) -> str:
    if len(depths) < 2:
        return ""
    shallow, deep = min(depths), max(depths)
    pt = (_final(histories[f"plain{shallow}"], "train_error"), _final(histories[f"plain{deep}"], "train_error"))
    rt = (_final(histories[f"resnet{shallow}"], "train_error"), _final(histories[f"resnet{deep}"], "train_error"))
    lines = []
    if None not in pt:
        worse = pt[1] > pt[0]
        lines.append(f"Plain: training error {_pct(pt[0])}% at depth {shallow} vs {_pct(pt[1])}% at depth {deep}: "
                     + ("deeper is worse, the degradation the paper shows." if worse else
                        "deeper is NOT worse here; the paper's effect did not show at this budget."))
    if None not in rt:
        better = rt[1] <= rt[0]
        lines.append(f"ResNet: training error {_pct(rt[0])}% at depth {shallow} vs {_pct(rt[1])}% at depth {deep}: "
                     + ("deeper is no worse, as in the paper." if better else
                        "deeper is worse at this budget; in the paper the deeper ResNet is better after the full "
                        "64k iterations, so a reduced budget may stop before it catches up."))
    if None not in pt and None not in rt:
        gap = pt[1] - rt[1]
        lines.append(f"At depth {deep} the ResNet's training error is {100 * abs(gap):.2f} points "
                     + ("below the plain net's: residual learning eases the optimisation, as in the paper."
                        if gap > 0 else "above the plain net's, unlike the paper."))
    return "\n\n".join(lines)


def table6(settings: ExperimentSettings, depths: list[int], seeds: int) -> Path:
    members = [Member(f"resnet{d}-seed{s}", "resnet", d, s, _model("resnet", d)) for d in depths for s in range(seeds)]
    histories = run_members(settings, members)
    rows = []
    for d in depths:
        errors = [_final(histories[f"resnet{d}-seed{s}"], "eval_error") for s in range(seeds)]
        errors = [100 * e for e in errors if e is not None]
        mean = statistics.mean(errors) if errors else None
        std = statistics.stdev(errors) if len(errors) > 1 else 0.0
        paper = PAPER_ERRORS.get(f"resnet{d}", (None, None))[0]
        rows.append([f"ResNet-{d}", len(errors), "" if mean is None else f"{mean:.2f} +- {std:.2f}",
                     "" if not errors else f"{min(errors):.2f}", "" if paper is None else f"{paper:.2f}"])
    return _write_results(settings, "Table 6: CIFAR-10 error of ResNets by depth", rows,
                          ["network", "seeds", "eval err % (mean +- std)", "best", "paper test err %"], histories, [],
                          "ResNets of each depth over several seeds, identical recipe.")


def shortcuts(settings: ExperimentSettings, depth: int, seed: int = 0) -> Path:
    members = [Member(f"option{o}", o, depth, seed, _model("resnet", depth, shortcut=o))
               for o in "ABC"]
    members.append(Member("plain", "plain", depth, seed, _model("plain", depth)))
    histories = run_members(settings, members)
    error_curves({m.name: histories[m.name] for m in members}, settings.out / "shortcuts.png",
                 f"shortcut options at depth {depth}")
    from ..summary import summarize

    rows = []
    for m in members:
        params = summarize(m.overrides["model"], **m.overrides["model_options"]).params
        rows.append([m.name, f"{params:,}", _pct(_final(histories[m.name], "train_error")),
                     _pct(_final(histories[m.name], "eval_error"))])
    return _write_results(settings, f"Shortcut options A/B/C at depth {depth}", rows,
                          ["shortcut", "params", "train err %", "eval err %"], histories, ["shortcuts.png"],
                          "Paper Table 3 (ImageNet ResNet-34, top-1 10-crop): plain 28.54, A 25.03, B 24.52, C 24.19.")
