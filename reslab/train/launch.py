"""``reslab train --nproc N``: run torchrun for the single-machine case and stop it cleanly on Ctrl-C.

torchrun starts each worker in a session of its own, so a terminal's Ctrl-C reaches only reslab and
torchrun; torchrun would forward it, SIGKILL any worker still saving 30 s later and end in its own
traceback. So torchrun runs in a session of its own too, and on Ctrl-C the launcher signals the
workers itself (the pids they report when ready) and waits. Each worker (``run_as_worker``) takes a
Ctrl-C as a stop request while it trains, stops with the others at their next sync step, and exits 0,
so torchrun ends as after a finished run; rank 0 writes the run's status to a file the launcher reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..fileio import atomic_write_text
from .interrupt import StopFlag, say_while_stopping

if TYPE_CHECKING:
    from .config import TrainConfig
    from .loop import RunResult

STATUS_ENV = "RESLAB_LAUNCH_STATUS"  # set for workers started here: the file rank 0 reports to
POLL_S = 0.2
NO_WORKERS_GRACE_S = 60.0  # Ctrl-C and the workers still not ready after this: stop torchrun instead
# torchrun, in its own session, needs these from the launcher (getattr: Windows has neither of the last two)
FORWARDED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name))


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """torchrun running ``reslab`` with ``argv`` minus its ``--nproc`` flag."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "reslab", *rest]


def check_before_launch(config: TrainConfig) -> None:
    """What can be checked without the data: the config (already resolved) and the model's name and
    options. A worker's error would otherwise come once per worker, then as torchrun's failure report."""
    from ..models.registry import resolve_spec

    from .config import DEFAULT_MODEL

    if config.model or not config.init_from:
        resolve_spec(config.model or DEFAULT_MODEL, **config.model_options)


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run torchrun to the end and return its exit status (0 for a finished run). The first Ctrl-C asks the
    workers to save and stop and waits for them (then KeyboardInterrupt); a second one kills them."""
    with tempfile.TemporaryDirectory(prefix="reslab-launch-") as tmp, StopFlag() as stop:
        status_file = Path(tmp) / "status"
        started: list[subprocess.Popen] = []
        # Installed before torchrun starts, so no signal finds it running without its launcher. A signal
        # the launcher was told to ignore (nohup) stays ignored.
        previous = {sig: signal.signal(sig, lambda sig, _: [p.send_signal(sig) for p in started])
                    for sig in FORWARDED if signal.getsignal(sig) is not signal.SIG_IGN}
        try:
            started.append(subprocess.Popen(torchrun_command(nproc, argv), start_new_session=True,
                                            env={**os.environ, STATUS_ENV: str(status_file)}))
            _wait(started[0], stop, status_file, nproc)
        except BaseException:  # a second Ctrl-C (or anything else): leave nothing running
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for proc in started:
                _signal_all(_worker_pids(status_file) + _children(proc.pid), signal.SIGKILL)
                proc.kill()
                proc.wait()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        status = status_file.read_text().strip() if status_file.exists() else None
    code = started[0].returncode
    if code != 0:
        return code if code > 0 else 128 - code  # killed by signal N: 128 + N
    if status == "interrupted":
        raise KeyboardInterrupt
    return 0


def _wait(proc: subprocess.Popen, stop: StopFlag, status_file: Path, nproc: int) -> None:
    signalled = False
    asked_at = None
    while proc.poll() is None:
        if stop.requested and not signalled:
            if asked_at is None:
                asked_at = time.monotonic()
                say_while_stopping("stopping the workers at their next sync step (Ctrl-C again kills them)")
            # Only once every worker reads Ctrl-C as a request: one still importing would die of it.
            workers = _worker_pids(status_file)
            if len(workers) >= nproc:
                _signal_all(workers, signal.SIGINT)
                signalled = True
            elif time.monotonic() - asked_at > NO_WORKERS_GRACE_S:
                proc.send_signal(signal.SIGINT)  # workers not ready yet (a slow start): torchrun stops its way
                signalled = True
        time.sleep(POLL_S)


def _worker_pids(status_file: Path) -> list[int]:
    """The workers that have reported ready (each writes its pid to ready-RANK)."""
    pids = []
    for ready in status_file.parent.glob("ready-*"):
        try:
            pids.append(int(ready.read_text()))
        except (OSError, ValueError):
            pass
    return pids


def run_as_worker(train: Callable[[Callable[[int], bool] | None], RunResult]) -> RunResult:
    """``train(should_stop)``, under reslab's launcher with Ctrl-C read as a stop request for the whole of
    it (before and after the training loop too, where a KeyboardInterrupt would make torchrun report a
    failure) and ignored once it is over; rank 0 reports the run's status to the launcher. Elsewhere just
    ``train(None)``."""
    status_file = os.environ.get(STATUS_ENV)
    if not status_file:
        return train(None)
    with StopFlag() as stop:
        atomic_write_text(str(os.getpid()), Path(status_file).with_name(f"ready-{os.environ.get('RANK', '0')}"))
        result = train(lambda step: stop.requested)
        if os.environ.get("RANK", "0") == "0":
            atomic_write_text(result.status + "\n", Path(status_file))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run is over: a late Ctrl-C must not fail this worker
    return result


def launched() -> bool:
    return bool(os.environ.get(STATUS_ENV))


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's /proc children lists; elsewhere none are found)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task ended meanwhile, or the kernel keeps no children lists
            pass
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.killpg(pid, sig)  # a worker leads its own process group (torchrun's doing): all of it
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):  # already gone
                pass
