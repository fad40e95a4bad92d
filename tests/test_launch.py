"""The ``--nproc`` launcher's pieces (its Ctrl-C handling end to end: tests/test_distributed.py)."""

import signal
import subprocess
import sys
import time

from reslab.train import launch


def test_torchrun_command_drops_only_the_nproc_flag():
    command = launch.torchrun_command(2, ["train", "--nproc", "2", "--epochs", "3", "--nproc=4", "--out", "r"])
    assert command[-7:] == ["-m", "reslab", "train", "--epochs", "3", "--out", "r"]
    assert "--nproc_per_node=2" in command and "--nproc" not in command and "--nproc=4" not in command


def test_children_lists_the_processes_a_process_started():
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']).wait()"])
    try:
        deadline = time.monotonic() + 20
        while not launch._children(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        children = launch._children(parent.pid)
        assert len(children) == 1 and children[0] != parent.pid
        launch._signal_all(children, signal.SIGKILL)  # not a group leader: falls back to the process itself
        assert parent.wait(timeout=20) == 0  # its wait() on the killed child returned
    finally:
        parent.kill()


def test_a_bad_model_under_nproc_is_one_line_before_torchrun_starts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "reslab", "train", "--nproc", "2", "--model", "resnet7",
                             "--data", "digits", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "reslab train: error: unknown model 'resnet7'; `reslab models` lists them (or pass a .yaml/.json spec)"]
    assert not (tmp_path / "run").exists()
