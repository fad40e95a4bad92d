import contextlib
import io
import pickle
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BUNDLE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bundle_weights.py"


def run_bundle_script(run: Path, name: str, weights_dir: Path, *extra: str,
                      command: str = "reslab train ...") -> "CliResult":
    """scripts/bundle_weights.py on ``run`` into ``weights_dir``, with placeholder card fields; its ``main``
    runs in this process (as ``cli`` does), with ``sys.exit("...")`` read as a shell would: exit 1, the text
    on stderr."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_weights", BUNDLE_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = [str(run), name, *extra, "--command", command, "--machine", "a test machine", "--data-note", "digits",
            "--weights-dir", str(weights_dir)]
    out, err = io.StringIO(), io.StringIO()
    saved_argv, sys.argv = sys.argv, [str(BUNDLE_SCRIPT), *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                script.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
    finally:
        sys.argv = saved_argv
    return CliResult(code, out.getvalue(), err.getvalue())


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str) -> CliResult:
    """``reslab ARGS`` in this process (the CLI's entry point, not a new Python: seconds saved per call),
    with what it printed. Tests of signals, exit paths and torchrun use a real subprocess instead."""
    from reslab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def write_cifar_folder(root: Path, per_batch: int = 20, str_keys: bool = False, with_test: bool = True,
                       seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the official layout: 5 training batches, a test batch, batches.meta.

    Keys are bytes (as the official Python-2 pickles load with encoding="bytes") unless str_keys.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def key(k):
        return k if str_keys else k.encode()

    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({key("label_names"): names, key("num_cases_per_batch"): per_batch}, f, protocol=2)
    files = [f"data_batch_{i}" for i in range(1, 6)] + (["test_batch"] if with_test else [])
    for name in files:
        labels = [int(i % 10) for i in range(per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({key("data"): data, key("labels"): labels, key("batch_label"): name.encode()}, f, protocol=2)
    return folder


def make_archive(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture
def tiny_cifar(tmp_path) -> Path:
    """A data root holding a tiny extracted CIFAR-10."""
    write_cifar_folder(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never touch the user's ~/.cache during tests.
    monkeypatch.setenv("RESLAB_DATA", str(tmp_path / "reslab-data"))
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _float32_training(request, monkeypatch):
    """Training's ``cpu_bf16: auto`` trains in bf16 where the CPU has it natively. The suite runs on CPUs
    of both kinds and its numeric checks assume float32, so in-process training here answers "no" to
    that question, except in tests marked ``cpu_arithmetic`` (the ones about the choice itself patch
    it, or ask this CPU)."""
    if request.node.get_closest_marker("cpu_arithmetic") is None:
        monkeypatch.setattr("reslab.train.setup.bfloat16_is_fast", lambda device="cpu": False)


def trained_like(name, **kw):
    """A model whose BN layers hold non-trivial statistics, as after training (eval mode)."""
    import reslab
    from torch import nn

    model = reslab.create_model(name, **kw)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()
