"""``reslab train --nproc N``: run torchrun for the single-machine case and stop it cleanly on Ctrl-C.

torchrun starts each worker in a session of its own, so a terminal's Ctrl-C reaches only reslab and
torchrun; torchrun would forward it, SIGKILL any worker still saving 30 s later and end in its own
traceback. So torchrun runs in a session of its own too, and on Ctrl-C reslab signals the workers
itself and waits: they stop together at their next sync step, rank 0 saves, each exits 0 (see
``LAUNCHED_ENV``), torchrun ends as after a finished run and keeps its rendezvous store up meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .interrupt import StopFlag

# Set for workers started here: an interrupted worker exits 0, so torchrun does not take the stop for a
# failure (a traceback, or a restart with --max-restarts); the launcher itself reports the interruption.
LAUNCHED_ENV = "RESLAB_LAUNCHED"
POLL_S = 0.2


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


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run torchrun to the end and return its exit status. The first Ctrl-C asks the workers to save and
    stop, then waits for them; a second one kills them. Raises KeyboardInterrupt after either."""
    proc = subprocess.Popen(torchrun_command(nproc, argv), env={**os.environ, LAUNCHED_ENV: "1"},
                            start_new_session=True)
    try:
        with StopFlag() as stop:
            signalled = False
            while proc.poll() is None:
                if stop.requested and not signalled:
                    workers = _children(proc.pid)
                    print(f"stopping {len(workers)} worker(s) at their next sync step (Ctrl-C again kills them)",
                          file=sys.stderr, flush=True)
                    _signal_all(workers, signal.SIGINT)
                    signalled = True
                time.sleep(POLL_S)
    except BaseException:  # a second Ctrl-C: leave nothing running
        _signal_all(_children(proc.pid), signal.SIGKILL)
        proc.kill()
        proc.wait()
        raise
    if stop.requested:
        raise KeyboardInterrupt
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode  # killed by signal N: 128 + N


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's /proc; elsewhere none are found)."""
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
            os.killpg(pid, sig)  # each worker leads its own process group (torchrun's doing)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):  # already gone
                pass
