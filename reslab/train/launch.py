"""``reslab train --nproc N``: run torchrun for the single-machine case and stop it cleanly on Ctrl-C.

A terminal's Ctrl-C reaches reslab, torchrun and every worker at once. The workers save a checkpoint
at their next step and exit by themselves (reslab.train.loop); torchrun, left alive, would forward
a second SIGINT and end in its own traceback. So reslab ends torchrun and then waits for the workers
it had started, so that the prompt comes back only after the checkpoint is on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

WORKER_SAVE_WAIT_S = 120  # how long interrupted workers may take to finish their step and save


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
    """Run torchrun to the end and return its exit status; on Ctrl-C, wait for its workers to save and
    raise KeyboardInterrupt."""
    proc = subprocess.Popen(torchrun_command(nproc, argv))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        workers = _children(proc.pid)
        proc.kill()  # before it forwards a second SIGINT (or prints a traceback); workers live on
        proc.wait()
        _wait_for_exit(workers, WORKER_SAVE_WAIT_S)  # a second Ctrl-C here stops waiting
        raise


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's /proc; elsewhere none are known and none are waited for)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task ended meanwhile, or the kernel does not offer children lists
            pass
    return found


def _wait_for_exit(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user: not ours, the pid was reused
        return False
    # An exited orphan is reaped by init at once; a zombie would read as alive until then.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
