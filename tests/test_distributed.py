"""torchrun + DDP on CPU over Gloo on 127.0.0.1: equivalence, evaluation, restart after a crash, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reslab.checkpoint import load_checkpoint
from reslab.train.config import resolve
from reslab.train.loop import fit

pytest.importorskip("sklearn")

# cpu_bf16 pinned off: torchrun's processes do not see conftest's float32 patch, and on a CPU with native
# bf16 they would train in bf16 while the in-process runs they are compared with train in float32.
COMMON = ["--recipe", "fast", "--model", "resnet", "--set", "model_options.depth=8", "--data", "digits",
          "--batch-size", "64", "--set", "cpu_bf16=false", "--quiet"]


def torchrun(nproc, *args, max_restarts=0, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESLAB_DIST_TIMEOUT": "60", "PYTHONUNBUFFERED": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--max-restarts={max_restarts}", "-m", "reslab", "train", *COMMON, *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    result = torchrun(2, "--iterations", "6", "--out", str(tmp_path / "ddp"))
    assert result.returncode == 0, result.stderr[-2000:]
    # One process, same global batch of 64, split into the same two slices (accumulation=2): each BN
    # sees one slice, as under DDP, and the summed gradient is the DDP average.
    config = resolve("fast", overrides=dict(model="resnet", model_options={"depth": 8}, data="digits",
                                            batch_size=64, iterations=6, epochs=None, accumulation=2,
                                            out=str(tmp_path / "single"), threads=1))
    fit(config, quiet=True)
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    single = load_checkpoint(tmp_path / "single" / "last.pt")
    assert ddp.progress["step"] == single.progress["step"] == 6
    params = [name for name, _ in single.build_model().named_parameters()]
    # Halving is exact in floating point and a two-way sum is order-free, so the updates agree to
    # rounding of the all-reduce's bucketed copies: 1e-6 is far below one SGD step's size (~1e-3).
    for name in params:
        torch.testing.assert_close(ddp.model_state[name], single.model_state[name], rtol=0, atol=1e-6)
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["processes"] == 2 and run["per_process_batch"] == 32 and run["global_batch"] == 64
    # Evaluation over 179 validation images split 90/89 counts each once: the logged error equals a
    # single-process evaluation of the saved model.
    logged = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[-1])["eval_error"]
    from reslab.data import EvalLoader, load_dataset
    from reslab.train.evaluate import evaluate

    val = load_dataset("digits", "val")
    again = evaluate(ddp.build_model(), EvalLoader(val, 500, ddp.normalizer), 10)
    assert int(again.count) == 179
    assert logged == pytest.approx(again.error, abs=1e-9)


def test_killed_worker_is_restarted_and_the_run_completes(tmp_path):
    out = tmp_path / "run"
    # Spare restarts: under heavy load a re-rendezvous can itself fail once and be retried.
    proc = torchrun(2, "--epochs", "3", "--out", str(out), max_restarts=3, wait=False)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (out / "metrics.jsonl").exists(), "no epoch finished in time"
    first_epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    final = load_checkpoint(out / "last.pt")
    assert final.progress["step"] == 3 * (1618 // 64)
    assert [row["epoch"] for row in final.progress["history"]] == list(range(1, 4))
    # The restarted workers resumed rather than starting over: epoch 1's record, wall time included,
    # is the one written before the kill (a fresh start would have timed it again).
    assert final.progress["history"][0] == first_epoch


def test_nproc_resumes_a_single_process_run_with_two(tmp_path):
    # Two things at once: --nproc starts torchrun, and a run resumes under another process count.
    out = tmp_path / "run"
    stopped = fit(resolve("fast", overrides=dict(model="resnet", model_options={"depth": 8}, data="digits",
                                                 batch_size=64, epochs=2, out=str(out))),
                  quiet=True, should_stop=lambda step: step == 30)
    assert stopped.status == "interrupted"
    assert json.loads((out / "run.json").read_text())["processes"] == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run([sys.executable, "-m", "reslab", "train", "--resume", str(out), "--nproc", "2", "--quiet"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint(out / "last.pt").progress["step"] == 2 * (1618 // 64)
    assert json.loads((out / "run.json").read_text())["processes"] == 2


@pytest.mark.parametrize("when", ["after an epoch", "while starting"])
def test_ctrl_c_under_nproc_stops_every_worker_with_one_checkpoint(tmp_path, when):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "RESLAB_DIST_TIMEOUT": "60",
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "reslab", "train", "--recipe", "fast", "--model", "resnet", "--set",
               "model_options.depth=8", "--data", "digits", "--batch-size", "32", "--epochs", "40", "--nproc", "2",
               "--out", str(out)]
    with open(tmp_path / "out.txt", "w") as stdout, open(tmp_path / "err.txt", "w") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=env, start_new_session=True)
    try:
        if when == "after an epoch":
            deadline = time.monotonic() + 120
            while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert (out / "metrics.jsonl").exists(), (tmp_path / "err.txt").read_text()[-2000:]
        else:  # as soon as the launcher has started torchrun: no worker has reported ready yet
            from reslab.train.launch import _children

            def torchrun_started():  # exec'd in its own session (before that, a group signal could reach it)
                return any(os.getsid(c) == c and "torch.distributed.run" in _cmdline(c) for c in _children(proc.pid))

            deadline = time.monotonic() + 60
            while not torchrun_started() and time.monotonic() < deadline:
                time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: torchrun and workers have sessions of their own
        assert proc.wait(timeout=180) == 130, (tmp_path / "err.txt").read_text()[-2000:]
        # The prompt comes back only once the workers have saved and exited.
        assert _processes_with(str(out)) == []
    finally:
        for pid in _processes_with(str(out)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()
    said, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err and "stopping the workers" in err, err[-2000:]
    assert (said + err).count(f"resume with --resume {out}") == 1, err[-2000:]  # rank 0's log, not every worker
    step = load_checkpoint(out / "last.pt").progress["step"]
    assert f"stopped at step {step};" in err and 0 < step < 40 * (1618 // 32)
    if when == "while starting":  # the request waited for the loop, which stops at its first sync step
        assert step == 25


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _processes_with(text):
    """Pids of the processes (not this one) whose command line contains ``text``."""
    pids = [int(p.name) for p in Path("/proc").glob("[0-9]*")]
    return [pid for pid in pids if pid != os.getpid() and text in _cmdline(pid)]
