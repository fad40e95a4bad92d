"""Bad input, one table: every case runs ``reslab.cli.main`` in this process and must end with exit
status 2, exactly one line on stderr that names the problem, no traceback, and no change to any file
that existed before (only the data folder's decode cache may appear).

Cases about ``reslab train`` (resume, locks, signals) live with the training loop's tests.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_archive, write_cifar_folder
from reslab.checkpoint import Checkpoint, save_checkpoint
from reslab.cli import main
from reslab.data.augment import Normalizer
from reslab.models.builder import Builder
from reslab.models.resnet import ResNet

HAS_FIFO = hasattr(os, "mkfifo")


class RunsCode:
    """Unpickling this creates ``path``: the marker that must never appear."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class World:
    """The files one case works with, all inside its tmp folder (also the working directory)."""

    def __init__(self, root: Path):
        self.root = root
        self.marker = root / "code-ran"

    def path(self, name: str) -> Path:
        return self.root / name

    def png(self, name: str, size: int = 8, value: int = 100) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
        return path

    def file(self, name: str, content: bytes) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def folder(self, name: str = "imgs", classes: tuple[str, ...] = ("a", "b"), per_class: int = 3) -> Path:
        for c in classes:
            for i in range(per_class):
                self.png(f"{name}/{c}/{i}.png", value=40 * i + (100 if c == "b" else 0))
        return self.path(name)

    def checkpoint(self, name: str = "model.pt") -> Path:
        """A tiny 2-class reslab checkpoint of 8x8 images, trained (so to say) on ``folder()``."""
        data = self.folder()
        spec = Builder(in_channels=3, num_classes=2, input_size=8, name="tiny").init_block(channels=4) \
            .residual_block(channels=4).fc().spec()
        checkpoint = Checkpoint(spec=spec, classes=["a", "b"], normalizer=Normalizer(torch.zeros(3), torch.ones(3)),
                                input_size=8, model_state=ResNet(spec).state_dict(), config={"data": str(data)})
        return save_checkpoint(checkpoint, self.path(name))

    def cifar_root(self, name: str = "cdata") -> Path:
        write_cifar_folder(self.path(name), per_batch=10)
        return self.path(name)

    def archive(self, name: str, members: dict[str, bytes]) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            for member, content in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        return path

    def fifo(self, name: str) -> Path:
        os.mkfifo(self.path(name))
        return self.path(name)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[World], list[str]]
    says: str  # a word or file name the one line must contain
    env: dict[str, str] = field(default_factory=dict)
    fifo: bool = False


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png_bytes()


def _hostile_checkpoint(w: World) -> Path:
    torch.save({"format": "reslab-checkpoint", "model": RunsCode(w.marker)}, w.path("evil.pt"))
    return w.path("evil.pt")


def _hostile_cifar(w: World) -> Path:
    root = w.cifar_root()
    with open(root / "cifar-10-batches-py" / "data_batch_4", "wb") as f:
        pickle.dump({b"data": RunsCode(w.marker), b"labels": [0]}, f, protocol=2)
    return root


def _truncated_cifar(w: World) -> Path:
    root = w.cifar_root()
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    return root


def _archived_cifar(w: World) -> Path:
    src = write_cifar_folder(w.path("src"), per_batch=10)
    w.path("adata").mkdir()
    make_archive(src, w.path("adata") / "cifar-10-python.tar.gz")
    return w.path("adata")


def _eval_on(data: Callable[[World], object], *extra: str) -> Callable[[World], list[str]]:
    return lambda w: ["eval", str(w.checkpoint()), "--data", str(data(w)), *extra]


def _predict(image: Callable[[World], Path], *extra: str) -> Callable[[World], list[str]]:
    return lambda w: ["predict", str(w.checkpoint()), str(image(w)), *extra]


def _explain(image: Callable[[World], Path], *extra: str) -> Callable[[World], list[str]]:
    return lambda w: ["explain", str(w.checkpoint()), str(image(w)), *extra]


def _spec(name: str, text: str | bytes) -> Callable[[World], list[str]]:
    return lambda w: ["summary", str(w.file(name, text if isinstance(text, bytes) else text.encode()))]


SKIP = {"RESLAB_SKIP_MD5": "1"}  # for test-made archives: the checks after the MD5 are the point

CASES = [
    # ---- predict: images
    Case("predict-missing-image", _predict(lambda w: w.path("nope.png")), "nope.png: no such file"),
    Case("predict-zero-byte-image", _predict(lambda w: w.file("empty.png", b"")), "empty.png: not a readable image"),
    Case("predict-truncated-png", _predict(lambda w: w.file("half.png", PNG[: len(PNG) // 2])),
         "half.png: not a readable image"),
    Case("predict-text-as-png", _predict(lambda w: w.file("words.png", b"hello, not pixels\n")),
         "words.png: not a readable image"),
    Case("predict-corrupt-jpeg", _predict(lambda w: w.file("bad.jpg", b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)),
         "bad.jpg: not a readable image"),
    Case("predict-fifo", _predict(lambda w: w.fifo("pipe.png")), "pipe.png: a named pipe", fifo=True),
    Case("predict-folder-named-like-an-image", _predict(lambda w: (w.path("x.png").mkdir(), w.path("x.png"))[1]),
         "x.png: no image files"),
    Case("predict-over-pixel-limit", _predict(lambda w: w.png("big.png", size=16)), "RESLAB_MAX_IMAGE_PIXELS",
         env={"RESLAB_MAX_IMAGE_PIXELS": "100"}),
    Case("predict-no-images", lambda w: ["predict", str(w.checkpoint())], "no images given"),
    Case("predict-top-k-not-a-number", _predict(lambda w: w.png("ok.png"), "--top-k", "three"), "--top-k"),
    Case("summary-spec-is-a-fifo", lambda w: ["summary", str(w.fifo("net.yaml"))], "net.yaml: not a regular file",
         fifo=True),
    Case("train-config-is-a-fifo", lambda w: ["train", "--config", str(w.fifo("c.yaml")), "--out", str(w.path("r"))],
         "c.yaml: not a regular file", fifo=True),
    Case("predict-top-k-negative", _predict(lambda w: w.png("ok.png"), "--top-k", "-3"), "--top-k: must be 1 or more"),
    Case("predict-top-k-zero", _predict(lambda w: w.png("ok.png"), "--top-k", "0"), "--top-k: must be 1 or more"),
    Case("summary-zero-classes", lambda w: ["summary", "resnet20", "--num-classes", "0"], "--num-classes"),
    Case("deepen-add-nothing", lambda w: ["deepen", str(w.checkpoint()), "--add", "0"], "--add: must be 1 or more"),
    Case("experiment-zero-jobs", lambda w: ["experiment", "table6", "--jobs", "0"], "--jobs: must be 1 or more"),
    Case("predict-unknown-precision", _predict(lambda w: w.png("ok.png"), "--precision", "float8"), "float8"),
    Case("predict-unbundled-model", lambda w: ["predict", "--model", "resnet110", str(w.png("ok.png"))],
         "resnet110"),
    # ---- explain
    Case("explain-missing-checkpoint", lambda w: ["explain", str(w.path("gone.pt")), str(w.png("ok.png")), "--json"],
         "gone.pt: no such checkpoint"),
    Case("explain-missing-image", _explain(lambda w: w.path("nope.png"), "--json"), "nope.png: no such file"),
    Case("explain-text-as-png", _explain(lambda w: w.file("words.png", b"hello, not pixels\n"), "--json"),
         "words.png: not a readable image"),
    Case("explain-image-is-a-folder", _explain(lambda w: (w.path("shots").mkdir(), w.path("shots"))[1], "--json"),
         "shots: a folder"),
    Case("explain-fifo", _explain(lambda w: w.fifo("pipe.png"), "--json"), "pipe.png: a named pipe", fifo=True),
    Case("explain-two-images", _explain(lambda w: w.png("ok.png"), str(Path("ok.png")), "--json"), "one image"),
    Case("explain-nothing-to-write", _explain(lambda w: w.png("ok.png")), "nothing to write"),
    Case("explain-unknown-class", _explain(lambda w: w.png("ok.png"), "--class", "zebra", "--json"),
         "--class zebra: not one of the model's classes (a, b)"),
    Case("explain-class-index-too-large", _explain(lambda w: w.png("ok.png"), "--class", "2", "--json"),
         "--class 2"),
    Case("explain-unknown-layer", _explain(lambda w: w.png("ok.png"), "--layer", "stages.9", "--json"),
         "--layer stages.9: no such module"),
    Case("explain-layer-not-a-map", _explain(lambda w: w.png("ok.png"), "--layer", "head.fc", "--json"),
         "not a feature map"),
    Case("explain-out-is-a-folder", lambda w: ["explain", str(w.checkpoint()), str(w.png("ok.png")), "--out",
                                               str((w.path("camdir").mkdir(), w.path("camdir"))[1])], "is a folder"),
    Case("explain-out-under-a-file", lambda w: ["explain", str(w.checkpoint()), str(w.png("ok.png")), "--out",
                                                str(w.file("plain.txt", b"x") / "cam.png")],
         "is a file, so nothing can be written"),
    Case("explain-out-not-an-image-name", _explain(lambda w: w.png("ok.png"), "--out", "cam.txt"),
         "not an image file name"),
    Case("predict-calibration-without-int8", _predict(lambda w: w.png("ok.png"), "--calibration", "imgs"),
         "--calibration is read only by int8; add --precision int8"),
    Case("eval-calibration-without-int8", lambda w: ["eval", str(w.checkpoint()), "--calibration", str(w.folder())],
         "--calibration is read only by int8; add --precision int8"),
    Case("export-calibration-without-int8", lambda w: ["export", str(w.checkpoint()), "--format", "onnx",
                                                       "--calibration", str(w.folder())],
         "--calibration is read only by int8; add --format onnx-int8"),
    # ---- checkpoints
    Case("checkpoint-missing", lambda w: ["predict", str(w.path("gone.pt")), str(w.png("ok.png"))],
         "gone.pt: no such checkpoint"),
    Case("checkpoint-zero-bytes", lambda w: ["predict", str(w.file("zero.pt", b"")), str(w.png("ok.png"))],
         "zero.pt: not a readable checkpoint"),
    Case("checkpoint-truncated", lambda w: ["eval", str(w.file("cut.pt", w.checkpoint().read_bytes()[:3000]))],
         "cut.pt: not a readable checkpoint"),
    Case("checkpoint-text-file", lambda w: ["eval", str(w.file("notes.pt", b"epoch 3: loss 0.1\n"))],
         "notes.pt: not a readable checkpoint"),
    Case("checkpoint-foreign-torch-file",
         lambda w: (torch.save({"weight": torch.zeros(2)}, w.path("other.pt")), ["eval", str(w.path("other.pt"))])[1],
         "other.pt: not a reslab checkpoint"),
    Case("checkpoint-pickle-that-runs-code", lambda w: ["eval", str(_hostile_checkpoint(w))],
         "evil.pt: not a readable checkpoint"),
    Case("checkpoint-empty-run-folder", lambda w: ["eval", str((w.path("run").mkdir(), w.path("run"))[1])],
         "no best.pt or last.pt"),
    Case("checkpoint-for-export-missing", lambda w: ["export", str(w.path("gone.pt"))], "gone.pt: no such checkpoint"),
    # ---- eval: data folders
    Case("eval-missing-folder", _eval_on(lambda w: w.path("nowhere")), "nowhere: no such dataset or folder"),
    Case("eval-empty-folder", _eval_on(lambda w: (w.path("bare").mkdir(), w.path("bare"))[1]), "no class folders"),
    Case("eval-one-class", _eval_on(lambda w: w.folder("solo", classes=("cats",))), "only one class folder"),
    Case("eval-class-without-images",
         _eval_on(lambda w: (w.folder("gap"), w.path("gap/c").mkdir(), w.path("gap"))[2]),
         "class folder has no images"),
    Case("eval-class-of-unreadable-images",
         _eval_on(lambda w: (w.folder("rot", classes=("a",)), w.file("rot/b/0.png", b"junk"), w.path("rot"))[2]),
         "has no readable images"),
    Case("eval-more-classes-than-the-model", _eval_on(lambda w: w.folder("three", classes=("a", "b", "c"))),
         "model has 2 classes"),
    Case("eval-unknown-split", lambda w: ["eval", str(w.checkpoint()), "--split", "holdout"], "holdout"),
    # ---- eval: CIFAR files and archives
    Case("cifar-pickle-that-runs-code", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10",
                                                   "--data-root", str(_hostile_cifar(w))], "refused to open"),
    Case("cifar-truncated-pickle", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10",
                                              "--data-root", str(_truncated_cifar(w))], "data_batch_2: truncated"),
    Case("archive-wrong-md5", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10",
                                         "--data-root", str(_archived_cifar(w))], "RESLAB_SKIP_MD5=1"),
    Case("data-root-is-a-file", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10", "--data-root",
                                           str(w.file("notes.txt", b"mine"))], "notes.txt: not a folder"),
    Case("archive-not-a-tar", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10", "--data-root",
                                         str(w.file("t/cifar-10-python.tar.gz", b"PK not a tar").parent)],
         "not a readable tar", env=SKIP),
    Case("archive-path-traversal", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10", "--data-root", str(
        w.archive("t/cifar-10-python.tar.gz", {"cifar-10-batches-py/batches.meta": b"x",
                                               "../../escaped.txt": b"gotcha"}).parent)],
         "unsafe archive member", env=SKIP),
    Case("archive-only-foreign-folders", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10", "--data-root",
                                                    str(w.archive("t/cifar-10-python.tar.gz",
                                                                  {"mnist/x": b"1", "photos/y": b"2"}).parent)],
         "no cifar-10-batches-py/ folder inside", env=SKIP),
    Case("cifar-meta-not-a-dict", lambda w: ["eval", str(w.checkpoint()), "--data", "cifar10", "--data-root", str(
        (lambda r: ((r / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps([1, 2], protocol=2)), r)[1])(
            w.cifar_root()))], "not a CIFAR pickle"),
    # ---- export / analyze / deepen / experiment outputs
    Case("export-out-is-a-folder", lambda w: ["export", str(w.checkpoint()), "--out",
                                              str((w.path("outdir").mkdir(), w.path("outdir"))[1])], "is a folder"),
    Case("export-out-under-a-file", lambda w: ["export", str(w.checkpoint()), "--out",
                                               str(w.file("plain.txt", b"x") / "sub" / "m.onnx")],
         "is a file, so nothing can be written"),
    Case("export-unknown-format", lambda w: ["export", str(w.checkpoint()), "--format", "pdf"], "pdf"),
    Case("analyze-out-is-a-file", lambda w: ["analyze", "responses", str(w.checkpoint()), "--out",
                                             str(w.file("taken.csv", b"mine"))], "taken.csv: is a file"),
    Case("analyze-missing-checkpoint", lambda w: ["analyze", "responses", str(w.path("gone.pt")),
                                                  "--out", str(w.path("resp"))], "no such checkpoint"),
    Case("analyze-unknown-analysis", lambda w: ["analyze", "gradients", str(w.checkpoint())], "gradients"),
    Case("deepen-out-is-a-folder", lambda w: ["deepen", str(w.checkpoint()), "--add", "1", "--out",
                                              str((w.path("deep").mkdir(), w.path("deep"))[1])], "is a folder"),
    Case("deepen-add-not-a-number", lambda w: ["deepen", str(w.checkpoint()), "--add", "two"], "--add"),
    Case("deepen-where-not-numbers", lambda w: ["deepen", str(w.checkpoint()), "--add", "1", "--where", "first",
                                                "--out", str(w.path("d.pt"))], "comma-separated integers"),
    Case("deepen-missing-checkpoint", lambda w: ["deepen", str(w.path("gone.pt")), "--add", "1"], "no such checkpoint"),
    Case("experiment-out-is-a-file", lambda w: ["experiment", "degradation", "--out",
                                                str(w.file("exp.txt", b"mine"))], "exp.txt: is a file"),
    Case("experiment-unknown-name", lambda w: ["experiment", "table99"], "table99"),
    Case("experiment-depth-not-6n-plus-2", lambda w: ["experiment", "table6", "--depths", "20,21", "--out",
                                                      str(w.path("exp"))], "got depth 21"),
    Case("experiment-zero-budget", lambda w: ["experiment", "table6", "--budget", "0", "--out", str(w.path("exp"))],
         "--budget must be in (0, 1], got 0.0"),
    Case("experiment-seed-too-large", lambda w: ["experiment", "table6", "--seed", str(2**64), "--out",
                                                 str(w.path("exp"))], "seed must be a whole number from -2**63"),
    Case("experiment-report-from-an-empty-folder", lambda w: ["experiment", "table6", "--report-only", "--out",
                                                              str(w.path("typo"))], "nothing to report"),
    Case("train-seed-too-large", lambda w: ["train", "--data", "digits", "--set", "seed=99999999999999999999",
                                            "--out", str(w.path("r"))], "seed must be a whole number from -2**63"),
    # ---- summary / models: specs and flags
    Case("spec-missing", lambda w: ["summary", str(w.path("nonet.yaml"))], "nonet.yaml: no such file"),
    Case("spec-bad-yaml", _spec("bad.yaml", "layers: [\n  - init_block: {channels: 8\n"), "not valid YAML"),
    Case("spec-bad-json", _spec("bad.json", '{"layers": [}'), "not valid JSON"),
    Case("spec-top-level-list", _spec("list.yaml", "- init_block: {}\n- fc: {}\n"), "must be a mapping"),
    Case("spec-unknown-key", _spec("k.yaml", "layers: [{init_block: {channels: 8}}, {fc: {}}]\ncolour: blue\n"),
         "unknown key(s) colour"),
    Case("spec-wrong-type", _spec("t.yaml", "layers:\n  - init_block: {channels: 8}\n"
                                            "  - residual_block: {channels: 8, repeat: many}\n  - fc: {}\n"),
         "repeat must be a positive integer"),
    Case("spec-unknown-layer", _spec("u.yaml", "layers:\n  - init_block: {channels: 8}\n  - attention: {}\n"),
         "unknown layer 'attention'"),
    Case("spec-absurd-repeat", _spec("huge.yaml", "layers:\n  - init_block: {channels: 16}\n"
                                                  "  - residual_block: {channels: 16, repeat: 100000}\n  - fc: {}\n"),
         "too large to build"),
    Case("spec-absurd-width", _spec("wide.yaml", "layers:\n  - init_block: {channels: 100000}\n"
                                                "  - residual_block: {channels: 100000}\n  - fc: {}\n"),
         "too large to build"),
    Case("spec-absurd-depth", _spec("deep.yaml", "model: resnet\ndepth: 6000002\n"), "too large to build"),
    Case("spec-binary-garbage", _spec("bin.yaml", b"\xff\xfe\x00\x81garbage"), "cannot read"),
    Case("spec-is-a-folder", lambda w: ["summary", str((w.path("net.yaml").mkdir(), w.path("net.yaml"))[1])],
         "net.yaml: not a regular file"),
    Case("summary-unknown-model", lambda w: ["summary", "resnet21"], "unknown model 'resnet21'"),
    Case("summary-negative-classes", lambda w: ["summary", "resnet20", "--num-classes", "-3"], "--num-classes: must be 1 or more"),
    Case("summary-input-size-not-a-number", lambda w: ["summary", "resnet20", "--input-size", "big"], "--input-size"),
    Case("summary-unknown-shortcut", lambda w: ["summary", "resnet20", "--shortcut", "D"], "'D'"),
    Case("models-unknown-family", lambda w: ["models", "--family", "mars"], "mars"),
    Case("unknown-verb", lambda w: ["fly"], "fly"),
]


def _snapshot(root: Path, cache: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry under ``root`` but the decode cache: size, mtime and (files) the bytes."""
    state = {}
    for path in sorted(root.rglob("*")):
        if cache in path.parents or path == cache:
            continue
        st = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        state[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, content)
    return state


def _exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse ends a bad command line this way
        return exc.code if isinstance(exc.code, int) else 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, tmp_path, monkeypatch, capsys, recwarn):
    if case.fifo and not HAS_FIFO:
        pytest.skip("no named pipes on this platform")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default output folder (runs/...) would land here, and be noticed
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    world = World(work)
    argv = case.argv(world)
    cache = Path(os.environ["RESLAB_DATA"])
    before = _snapshot(tmp_path, cache)
    capsys.readouterr()

    status = _exit_status(argv)

    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (status, err)
    assert len(lines) == 1, err
    assert case.says in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert _snapshot(tmp_path, cache) == before
    assert not world.marker.exists()
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_the_corpus_is_large_and_every_case_is_distinct():
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)
