"""Transfer learning from the command line: weights saved by other code start a run (a new classifier
when the classes differ), a linear probe leaves the backbone bit-identical, a smaller backbone rate
reaches the optimizer and resumes exactly, ``reslab import`` makes a checkpoint every verb takes, and
``reslab features`` writes what the classifier reads.

The foreign files are written here from reslab models, under the key names of torchvision's layout
(conv1, bn1, layerS.I..., downsample.0/1, fc) and the common CIFAR layout (..., linear).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli
from PIL import Image
from torch import nn

import reslab
from reslab.checkpoint import load_checkpoint
from reslab.data.augment import PUBLISHED_STATISTICS, preprocess_eval
from reslab.data.images import expand_paths, load_images
from reslab.train import distributed
from reslab.train.config import resolve
from reslab.train.loop import fit, resume_run
from reslab.train.setup import prepare_run

CLASSES = ("cat", "dog", "fox")
BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$")


def image_folder(root: Path, per_class: int = 8, size: int = 16) -> Path:
    """root/<class>/<n>.png: each class its own tint, so that a classifier has something to learn."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3)) + np.eye(3, dtype=np.int64)[c] * 120
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def trained_looking(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and scales, so that a mis-mapped or retrained buffer shows; a classifier
    unlike the fresh one the same seed draws."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.num_batches_tracked.fill_(1000)
        if isinstance(m, nn.Linear):
            m.weight.data.mul_(3)
    return model.eval()


def foreign_keys(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """A reslab state dict under torchvision's names (head "fc": shortcuts are downsample.0/1) or the
    CIFAR layout's (head "linear": shortcut.0/1)."""
    shortcut = "downsample" if head == "fc" else "shortcut"
    out = {}
    for key, value in state.items():
        key = key.replace("stem.conv.", "conv1.").replace("stem.bn.", "bn1.").replace("head.fc.", f"{head}.")
        match = BLOCK.match(key)
        if match:
            stage, index, rest = match.groups()
            rest = rest.replace("shortcut.conv.", f"{shortcut}.0.").replace("shortcut.bn.", f"{shortcut}.1.")
            key = f"layer{int(stage) + 1}.{index}.{rest}"
        out[key] = value
    return out


def tiny_network(folder: Path) -> str:
    """A spec file naming ResNet-8 (one block a stage): what --model names in these tests."""
    spec = folder / "resnet8.yaml"
    spec.write_text("model: resnet\ndepth: 8\n")
    return str(spec)


@pytest.fixture
def world(tmp_path):
    """A 3-class image folder, and a trained-looking ResNet-8 (option B shortcuts) with 10 classes saved in
    torchvision's layout, nested and prefixed as DataParallel code saves it."""
    torch.manual_seed(0)
    model = tiny_network(tmp_path)
    original = trained_looking(reslab.create_model(model, shortcut="B", num_classes=10))
    tv = tmp_path / "tv.pth"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in foreign_keys(original.state_dict(), "fc").items()}},
               tv)
    return image_folder(tmp_path / "pets"), original, tv, model


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().forward_head(model.forward_features(x), pre_logits=True)


def one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def config(out: Path, data: Path, **values):
    base = {"data": str(data), "epochs": 2, "batch_size": 8, "lr": 0.05, "out": str(out), "eval_batch_size": 64,
            "augment": False}
    return resolve("fast", overrides={**base, **values})


def test_a_torchvision_layout_file_starts_a_run_with_a_new_classifier(world, tmp_path):
    data, original, tv, model = world
    run = prepare_run(config(tmp_path / "look", data, init_from=str(tv), model=model,
                             model_options={"shortcut": "B"}), torch.device("cpu"), distributed.DistContext(),
                      resume=False, quiet=True)
    run.lock.release()
    assert run.spec.num_classes == 3 and run.classes == list(CLASSES)
    # The backbone is the file's: the same pooled features, so the same logits on the classes kept.
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(features_of(run.model, x), features_of(original, x), rtol=1e-5, atol=1e-5)
    # torchvision's files were trained on ImageNet-normalised inputs; the run feeds its weights the same.
    mean, std = PUBLISHED_STATISTICS["imagenet"]
    assert torch.equal(run.normalizer.mean, torch.tensor(mean)) and torch.equal(run.normalizer.std, torch.tensor(std))
    facts = json.loads((tmp_path / "look" / "run.json").read_text())["init_from"]
    assert facts["kind"] == "torchvision layout" and facts["classes_in_file"] == 10 and facts["new_classifier"]

    result = cli("train", "--init-from", tv, "--model", model, "--shortcut", "B", "--data", data, "--recipe",
                 "fast", "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "a new classifier for the data's 3 classes (the file's has 10 classes)" in result.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt").spec.num_classes == 3


def test_a_linear_probe_trains_the_classifier_alone(world, tmp_path):
    data, _original, _tv, model = world
    # Same classes as the file, so that the classifier is the file's and its change shows.
    start = trained_looking(reslab.create_model(model, shortcut="B", num_classes=3))
    torch.save(foreign_keys(start.state_dict(), "fc"), tmp_path / "three.pth")
    fit(config(tmp_path / "probe", data, init_from=str(tmp_path / "three.pth"), model=model,
               model_options={"shortcut": "B"}, finetune="head", augment=True), quiet=True)
    trained = load_checkpoint(tmp_path / "probe" / "last.pt").model_state
    before = start.state_dict()
    backbone = [k for k in before if not k.startswith("head.fc.")]
    assert len(backbone) > 40 and any(k.endswith("running_mean") for k in backbone)
    for key in backbone:  # weights, BN running statistics and counters: bit for bit
        assert torch.equal(trained[key], before[key]), key
    assert not torch.equal(trained["head.fc.weight"], before["head.fc.weight"])


def test_a_smaller_backbone_rate_reaches_the_optimizer_and_resumes_exactly(world, tmp_path):
    data, _original, tv, model = world
    settings = {"init_from": str(tv), "model": model, "model_options": {"shortcut": "B"}, "backbone_lr_scale": 0.1,
                "schedule": "constant", "warmup": 0}
    whole = fit(config(tmp_path / "whole", data, **settings), quiet=True)
    stopped = fit(config(tmp_path / "split", data, **settings), quiet=True, should_stop=lambda step: step == 3)
    assert stopped.status == "interrupted"
    resumed = resume_run(tmp_path / "split", quiet=True)
    timing = {"images_per_s", "epoch_time_s", "wall_time_s"}
    assert ([{k: v for k, v in row.items() if k not in timing} for row in resumed.history]
            == [{k: v for k, v in row.items() if k not in timing} for row in whole.history])
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    # The fast recipe exempts BN and biases from decay: backbone (x0.1) and classifier groups, each twice.
    groups = a.optimizer_state["param_groups"]
    assert [g["lr_scale"] for g in groups] == [0.1, 0.1, 1.0, 1.0]
    assert len(groups[2]["params"]) + len(groups[3]["params"]) == 2  # head.fc weight and bias
    last_lr = whole.history[-1]["lr"]
    assert groups[0]["lr"] == pytest.approx(0.1 * last_lr) and groups[2]["lr"] == pytest.approx(last_lr)


def test_import_gives_a_checkpoint_that_eval_predict_export_and_features_take(tmp_path):
    data = image_folder(tmp_path / "pets")
    model = tiny_network(tmp_path)
    torch.manual_seed(0)
    original = trained_looking(reslab.create_model(model, num_classes=3))  # option A: no shortcut weights
    cifar = tmp_path / "resnet8.th"
    torch.save({"best_prec1": 91.7, "state_dict": {f"module.{k}": v for k, v in
                                                  foreign_keys(original.state_dict(), "linear").items()}}, cifar)
    ck = tmp_path / "r8.pt"
    result = cli("import", cifar, "--model", model, "--normalize", "cifar", "--data", data, "--out", ck)
    assert result.returncode == 0, result.stderr
    imported = load_checkpoint(ck)
    assert imported.classes == list(CLASSES) and imported.input_size == 16
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(imported.build_model()(x), original(x))
    assert cli("eval", ck).returncode == 0  # the folder named at import is its dataset
    predicted = cli("predict", ck, data / "dog" / "0.png")
    assert predicted.returncode == 0 and predicted.stdout.startswith(str(data / "dog" / "0.png"))
    exported = cli("export", ck, "--format", "torchscript", "--out", tmp_path / "r8.torchscript.pt")
    assert exported.returncode == 0, exported.stderr

    out = tmp_path / "feats.npz"
    assert cli("features", ck, data, "--out", out, "--batch-size", "5").returncode == 0
    saved = np.load(out)
    files = expand_paths([data])
    assert saved["features"].shape == (24, 64)
    assert list(saved["paths"]) == [str(f.relative_to(data)) for f in files]
    assert list(saved["classes"]) == list(CLASSES)
    assert list(saved["labels"]) == [CLASSES.index(f.parent.name) for f in files]
    # By hand: images read as predict reads them, through the network up to its global average pool.
    model = imported.build_model()
    pixels = preprocess_eval(load_images(files, 3, 16), imported.normalizer)
    by_hand = features_of(model, pixels)
    torch.testing.assert_close(torch.from_numpy(saved["features"]), by_hand, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # what the classifier reads: its logits are the model's
        torch.testing.assert_close(model.head.fc(by_hand), model(pixels))

    # Started from the import, a run normalises as the weights were trained (CIFAR's statistics), and keeps
    # the classifier of the classes it was trained for.
    fit(config(tmp_path / "tuned", data, init_from=str(ck), epochs=1), quiet=True)
    mean, _std = PUBLISHED_STATISTICS["cifar"]
    assert torch.equal(load_checkpoint(tmp_path / "tuned" / "last.pt").normalizer.mean, torch.tensor(mean))
    assert not json.loads((tmp_path / "tuned" / "run.json").read_text())["init_from"]["new_classifier"]
    # Three other classes: as many outputs, but a new classifier.
    others = tmp_path / "others"
    for name in CLASSES:
        (data / name).rename(data / name.upper())
    run = prepare_run(config(others, data, init_from=str(ck)), torch.device("cpu"), distributed.DistContext(),
                      resume=False, quiet=True)
    run.lock.release()
    assert json.loads((others / "run.json").read_text())["init_from"]["new_classifier"]
    assert not torch.equal(run.model.head.fc.weight.detach(), imported.model_state["head.fc.weight"])


def test_torchvision_bottlenecks_stride_on_their_3x3_conv(tmp_path):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text("model: resnet\ndepth: 11\nblock: bottleneck\n")  # one bottleneck a stage
    torch.manual_seed(0)
    original = trained_looking(reslab.create_model(spec_file, bottleneck_stride="3x3", shortcut="B", num_classes=5))
    torch.save(foreign_keys(original.state_dict(), "fc"), tmp_path / "tv.pth")
    result = cli("import", tmp_path / "tv.pth", "--model", spec_file, "--shortcut", "B", "--out", tmp_path / "ck.pt")
    assert result.returncode == 0, result.stderr
    imported = load_checkpoint(tmp_path / "ck.pt")
    assert imported.spec.bottleneck_stride == "3x3" and imported.classes == [f"class_{i}" for i in range(5)]
    assert imported.input_size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(imported.build_model()(x), original(x))
    # Trained from the file directly, the run keeps the stride its layout implies, and resumes with it.
    run = tmp_path / "run"
    settings = {"init_from": str(tmp_path / "tv.pth"), "model": str(spec_file), "model_options": {"shortcut": "B"},
                "epochs": 1}
    data = image_folder(tmp_path / "pets")
    assert fit(config(run, data, **settings), quiet=True, should_stop=lambda step: step == 1).status == "interrupted"
    assert resume_run(run, quiet=True).status == "finished"
    assert load_checkpoint(run / "last.pt").spec.bottleneck_stride == "3x3"


def test_bad_transfer_input_is_one_line(world, tmp_path):
    data, _original, tv, model = world
    (tmp_path / "empty").mkdir()
    ck = tmp_path / "ck.pt"
    assert cli("import", tv, "--model", model, "--shortcut", "B", "--out", ck).returncode == 0
    cifar_layout = tmp_path / "c.th"
    torch.save(foreign_keys(reslab.create_model(model, num_classes=3).state_dict(), "linear"), cifar_layout)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    (tmp_path / "empty.npz").write_text("a file, not a folder")
    train = ("train", "--data", data, "--epochs", "1", "--out", tmp_path / "never")
    cases = [
        (cli(*train, "--init-from", tv), "do not say which network they are"),
        (cli(*train, "--init-from", tv, "--model", model), "projection shortcuts: --shortcut B"),
        (cli(*train, "--init-from", tv, "--model", "resnet20", "--shortcut", "B"), "does not fit resnet20"),
        (cli(*train, "--init-from", cifar_layout, "--model", model), "choose --normalize"),
        (cli(*train, "--init-from", ck, "--set", "finetune=head", "--set", "backbone_lr_scale=0.1"),
         "backbone_lr_scale has no effect"),
        (cli(*train, "--init-from", ck, "--set", "finetune=head", "--set", "average_from=0.5"), "average_from"),
        (cli(*train, "--set", "finetune=some"), "finetune must be one of"),
        (cli(*train, "--normalize", "weights"), "has none"),
        (cli("import", cifar_layout, "--model", model, "--out", tmp_path / "x.pt"), "give --normalize"),
        (cli("import", tv, "--model", model, "--shortcut", "B", "--classes", names, "--out", tmp_path / "x.pt"),
         "2 names, but the weights have 10 classes"),
        (cli("import", ck, "--model", "resnet20", "--out", tmp_path / "x.pt"), "already a reslab checkpoint"),
        (cli("import", data / "cat" / "0.png", "--model", "resnet20", "--out", tmp_path / "x.pt"), "not a readable"),
        (cli("features", tmp_path / "missing.pt", data, "--out", tmp_path / "f.npz"), "no such checkpoint"),
        (cli("features", ck, tmp_path / "empty", "--out", tmp_path / "f.npz"), "no image files"),
        (cli("features", ck, data, "--out", tmp_path / "f.txt"), "name a .npz file"),
        (cli("features", ck, data, "--out", tmp_path / "empty.npz/f.npz"), None),
    ]
    for result, fragment in cases:
        one_line_error(result, *([fragment] if fragment else []))
    assert not (tmp_path / "never").exists() and not (tmp_path / "x.pt").exists()
    assert not (tmp_path / "f.npz").exists()
