"""Ctrl-C handling: StopFlag, and the launcher's wait for interrupted workers."""

import subprocess
import sys
import time

import pytest

from reslab.train import interrupt, launch
from reslab.train.interrupt import StopFlag


def test_a_repeated_sigint_within_the_grace_is_one_ctrl_c(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(interrupt.time, "monotonic", lambda: clock[0])
    stop = StopFlag()
    stop._handle()
    assert stop.requested
    clock[0] += interrupt.REPEAT_GRACE_S / 2  # torchrun's forwarded copy of the same Ctrl-C
    stop._handle()
    assert stop.requested
    clock[0] += interrupt.REPEAT_GRACE_S  # a second press: the user insists
    with pytest.raises(KeyboardInterrupt):
        stop._handle()


def test_torchrun_command_drops_only_the_nproc_flag():
    command = launch.torchrun_command(2, ["train", "--nproc", "2", "--epochs", "3", "--nproc=4", "--out", "r"])
    assert command[-7:] == ["-m", "reslab", "train", "--epochs", "3", "--out", "r"]
    assert "--nproc_per_node=2" in command and "--nproc" not in command and "--nproc=4" not in command


def test_waiting_for_workers_ends_when_they_exit():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1.5)']); "
                               "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while not launch._children(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        children = launch._children(parent.pid)
        assert len(children) == 1
        parent.kill()  # as the launcher kills torchrun: its child lives on
        parent.wait()
        assert launch._alive(children[0])
        started = time.monotonic()
        launch._wait_for_exit(children, timeout_s=20)
        assert not launch._alive(children[0]) and time.monotonic() - started < 10
    finally:
        parent.kill()
