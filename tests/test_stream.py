"""Image folders read as training goes: exact resume, DDP slices, unreadable files, the ImageNet recipes'
crops, 10-crop and multi-scale testing against a hand computation, and bad settings."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli
from PIL import Image

from reslab.checkpoint import load_checkpoint
from reslab.data import Normalizer
from reslab.data.augment import (
    IMAGENET_EIGENVALUES,
    IMAGENET_EIGENVECTORS,
    lighting_shift,
)
from reslab.data.crops import CropSpec, sample_rng
from reslab.data.files import folder_split
from reslab.data.stream import FileImages, StreamTrainLoader, _Crops
from reslab.errors import ConfigError
from reslab.models.registry import resolve_spec
from reslab.models.resnet import ResNet
from reslab.train import rundata
from reslab.train.config import resolve
from reslab.train.loop import fit, resume_run
from reslab.train.schedules import plateaus, schedule_for
from reslab.views import view_scores

TIMING = {"images_per_s", "epoch_time_s", "wall_time_s"}


def write_folder(root: Path, classes: int = 3, per_class: int = 10, seed: int = 0, broken: bool = False) -> Path:
    """Small JPEGs and PNGs of random sizes (16-48 px), each class a different brightness."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(16, 49, 2))
            pixels = (rng.random((h, w, 3)) * 90 + 70 * c).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.{'png' if i % 3 == 0 else 'jpg'}", quality=90)
    if broken:
        (root / "class1" / "05b.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return root


def tiny_config(data: Path, out: Path, **overrides):
    values = dict(model="resnet", model_options={"depth": 8}, data=str(data), out=str(out), image_size=16,
                  scale_range=[16, 24], eval_resize=18, batch_size=8, epochs=2, iterations=None, eval_batch_size=16,
                  plateau_patience=1, plateau_threshold=1.0, data_format="stream", workers=0, threads=1)
    values.update(overrides)
    return resolve("imagenet-paper", overrides=values)


def strip_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def test_a_streamed_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    data = write_folder(tmp_path / "images")
    whole = fit(tiny_config(data, tmp_path / "whole", epochs=3), quiet=True)
    stopped = fit(tiny_config(data, tmp_path / "split", epochs=3), quiet=True, should_stop=lambda step: step == 4)
    assert stopped.status == "interrupted" and len(stopped.history) == 1  # 3 batches per epoch: mid-epoch 2
    resumed = resume_run(tmp_path / "split", quiet=True)
    assert resumed.status == "finished"
    assert strip_timing(resumed.history) == strip_timing(whole.history)
    # plateau_threshold 1.0: no evaluation improves enough, so after the second (patience 1) the lr drops.
    assert [row["lr"] for row in whole.history] == pytest.approx([0.1, 0.1, 0.1 * 0.1])
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert a.input_size == 16 and a.normalizer.mean.shape == (3, 16, 16)  # the paper's per-pixel mean


def test_an_auto_run_resumes_in_the_format_it_started_with(tmp_path, monkeypatch):
    """The cache and the files give different pixels: a run that started on the cache must not resume
    on the files because the disk has filled up since (auto would now choose them)."""
    data = write_folder(tmp_path / "images")
    settings = {"epochs": 2, "data_format": "auto", "data_root": str(tmp_path / "cache")}
    whole = fit(tiny_config(data, tmp_path / "whole", **settings), quiet=True)
    fit(tiny_config(data, tmp_path / "split", **settings), quiet=True, should_stop=lambda step: step == 4)
    assert json.loads((tmp_path / "split" / "run.json").read_text())["data_format"] == "cache"
    monkeypatch.setattr(rundata, "_free_disk", lambda folder: 10)
    assert rundata.choose_format(tiny_config(data, tmp_path / "x", **settings), lambda line: None) == "stream"
    resumed = resume_run(tmp_path / "split", quiet=True)
    assert strip_timing(resumed.history) == strip_timing(whole.history)
    assert json.loads((tmp_path / "split" / "run.json").read_text())["data_format"] == "cache"


def loader_for(files, rank=0, world_size=1, workers=0, batch_size=8):
    spec = CropSpec("scale", 16, 18, (16, 24), flip=True, lighting=0.1)
    return StreamTrainLoader(FileImages(files), batch_size, Normalizer(torch.zeros(3), torch.ones(3)), spec, seed=3,
                             rank=rank, world_size=world_size, workers=workers)


def test_each_process_reads_its_own_slice_and_together_they_read_the_single_process_batches(tmp_path):
    files = folder_split(write_folder(tmp_path / "images"), "trainval", 3, 16, 0.1)
    single = list(loader_for(files).epoch(1))
    ranks = [list(loader_for(files, rank=r, world_size=2).epoch(1)) for r in (0, 1)]
    seen = []
    for whole, part0, part1 in zip(single, *ranks):
        rows0, rows1 = set(part0.rows.tolist()), set(part1.rows.tolist())
        assert not rows0 & rows1 and rows0 | rows1 == set(whole.rows.tolist())
        assert torch.equal(part0.images, whole.images[0::2]) and torch.equal(part1.images, whole.images[1::2])
        seen += whole.rows.tolist()
    assert len(seen) == len(set(seen)) == len(single) * 8  # an epoch: no image twice
    # A resumed epoch reads the batches it would have read, and workers change nothing.
    tail = list(loader_for(files, workers=2).epoch(1, start=2))
    assert all(torch.equal(a.images, b.images) for a, b in zip(tail, single[2:]))


def test_an_unreadable_image_is_left_out_of_its_batch_and_named(tmp_path):
    files = folder_split(write_folder(tmp_path / "images", broken=True), "trainval", 3, 16, 0.1)
    broken = next(i for i in range(len(files)) if files.path(i).name == "05b.jpg")
    loader = loader_for(files, batch_size=31)  # the whole folder in one batch
    with pytest.warns(UserWarning, match="05b.jpg: unreadable image, skipped"):
        batch = next(loader.epoch(0))
    assert len(batch.labels) == 30 and broken not in batch.rows.tolist()
    # The disk cache skips and names it when it is built, and never reads it again.
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): class1/05b.jpg"):
        cached = rundata.open_cache(files, 24, tmp_path / "cache", 0, say=lambda line: None)
    assert len(cached.files) == 30 and "05b.jpg" not in [cached.files.path(i).name for i in range(30)]


def test_the_paper_recipe_resizes_the_shorter_side_within_256_480_and_crops_224():
    config = resolve("imagenet-paper", overrides={"data": "images"})
    spec = rundata.crop_spec(config)
    assert (spec.kind, spec.size, spec.scale_range, spec.flip, spec.lighting) == ("scale", 224, (256, 480), True, 0.1)
    rng = np.random.default_rng(0)
    shorter_sides = []
    for row in range(300):
        width, height = (int(v) for v in rng.integers(200, 900, 2))
        left, top, right, bottom = spec.box(sample_rng(0, 0, row), width, height)
        assert 0 <= left and 0 <= top and right <= width + 1e-6 and bottom <= height + 1e-6
        assert right - left == pytest.approx(bottom - top, rel=0.02)  # square in the resized image
        shorter_sides.append(224 * min(width, height) / (right - left))  # the resize the box implies
    assert 255 <= min(shorter_sides) < 265 and 470 < max(shorter_sides) <= 481
    # One real image through a worker's code path: a 224 crop, uint8.
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))

    class OneImage:
        files = type("F", (), {"channels": 3, "__len__": lambda self: 1})()

        def open(self, row):
            import contextlib

            return contextlib.nullcontext(image)

    crop, extras, _, ok = _Crops(OneImage(), spec, 0, 0)[0]
    assert ok and crop.shape == (3, 224, 224) and crop.dtype == np.uint8 and extras[0:3].any()
    # PCA lighting (Krizhevsky et al. 2012): the shift is sum_i alpha_i * lambda_i * p_i.
    alpha = torch.tensor([[0.1, -0.2, 0.3]])
    expected = sum(alpha[0, i] * IMAGENET_EIGENVALUES[i] * torch.tensor(IMAGENET_EIGENVECTORS)[:, i] for i in range(3))
    assert torch.allclose(lighting_shift(alpha)[0], expected)


def hand_views(path: Path, sizes, crop: int | None):
    """A file's views, by hand: PIL resize of the shorter side, then tensor slicing."""
    img = Image.open(path).convert("RGB")
    out = []
    for side in sizes:
        w, h = img.size
        scale = side / min(w, h)
        resized = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))
    if crop is None:
        return out
    x = out[0]
    H, W = x.shape[1:]
    corners = [x[:, :crop, :crop], x[:, :crop, W - crop:], x[:, H - crop:, :crop], x[:, H - crop:, W - crop:]]
    top, left = (H - crop) // 2, (W - crop) // 2
    five = corners + [x[:, top:top + crop, left:left + crop]]
    return five + [v.flip(2) for v in five]


def test_ten_crop_and_multiscale_testing_equal_a_hand_computation(tmp_path):
    files = folder_split(write_folder(tmp_path / "images", per_class=4), "trainval", 3, 16, 0.1)
    torch.manual_seed(0)
    model = ResNet(resolve_spec("resnet", depth=8, num_classes=3)).eval()
    mean = torch.rand(3, 16, 16)
    normalizer = Normalizer(mean, torch.ones(3))  # a per-pixel mean: resized for the other scales

    def hand(views):
        probs = []
        for v in views:
            m = F.interpolate(mean[None], size=v.shape[1:], mode="bilinear", align_corners=False)[0]
            probs.append(model((v.float() / 255 - m)[None]).softmax(1)[0])
        return torch.stack(probs).mean(0).log()

    with torch.no_grad():
        ten = torch.cat([s for s, _ in view_scores(model, files, normalizer, crops=10, resize=18, batch_size=5, workers=0)])
        scales = torch.cat([s for s, _ in view_scores(model, files, normalizer, scales=(16, 20, 28), flip=True,
                                                      batch_size=5, workers=0)])
        for row in range(len(files)):
            path = files.path(row)
            assert torch.allclose(ten[row], hand(hand_views(path, [18], 16)), atol=1e-5)
            views = hand_views(path, [16, 20, 28], None)
            assert torch.allclose(scales[row], hand(views + [v.flip(2) for v in views]), atol=1e-5)
        assert not torch.allclose(ten, scales, atol=1e-3)  # two different tests


def test_plateau_drops_the_rate_after_patience_evaluations_without_progress():
    history = [{"eval_error": e} for e in (0.5, 0.4, 0.41, 0.40, 0.35, 0.36, 0.37)]
    assert [plateaus(history[:n], 2, 0.001) for n in range(1, 8)] == [0, 0, 0, 1, 1, 1, 2]
    config = resolve("imagenet-paper", overrides={"data": "x", "plateau_patience": 2})
    schedule = schedule_for(config, 600_000, history)
    assert schedule(10) == pytest.approx(0.1 * 0.1 ** 2)


def test_auto_reads_small_folders_into_memory_and_full_size_crops_from_the_cache_or_the_files(tmp_path, monkeypatch):
    data = write_folder(tmp_path / "images", per_class=4)
    say = []
    assert rundata.choose_format(resolve("paper", overrides={"data": str(data), "image_size": 16}), say.append) == "memory"
    paper = resolve("imagenet-paper", overrides={"data": str(data), "image_size": 16, "scale_range": [16, 24]})
    assert rundata.choose_format(paper, say.append) == "cache"
    monkeypatch.setattr(rundata, "_free_disk", lambda folder: 10)
    assert rundata.choose_format(paper, say.append) == "stream" and "resized cache" in say[-1]
    monkeypatch.setattr(rundata, "_available_memory", lambda: 1000)
    assert rundata.choose_format(resolve("paper", overrides={"data": str(data), "image_size": 16}), say.append) == "stream"
    with pytest.raises(ConfigError, match="--image-size"):
        rundata.choose_format(resolve("paper", overrides={"data": str(data)}), say.append)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder and a run trained on it (one epoch), shared by the bad-settings cases."""
    root = tmp_path_factory.mktemp("trained")
    data = write_folder(root / "images", per_class=4)
    fit(tiny_config(data, root / "run", epochs=1, eval_split=None, schedule="constant"), quiet=True)
    return data, root / "run"


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "DATA", "--set", "data_format=disk"], "data_format must be one of"),
    (["train", "--data", "DATA", "--set", "crop=scale"], "needs the crops' side"),
    (["train", "--data", "DATA", "--recipe", "imagenet-paper", "--set", "scale_range=[480,256]"], "scale_range"),
    (["train", "--data", "DATA", "--recipe", "imagenet-paper", "--set", "scale_range=[128,480]"], "starts below"),
    (["train", "--data", "DATA", "--recipe", "imagenet-paper", "--eval-split", "none"], "schedule plateau"),
    (["train", "--data", "cifar10", "--recipe", "imagenet-fast"], "not one"),
    (["eval", "RUN", "--scales", "224,x"], "--scales: expected comma-separated sizes"),
    (["eval", "RUN", "--crops", "5"], "--crops: invalid choice"),
    (["eval", "RUN", "--crops", "10", "--tta", "flip"], "mirror images already"),
])
def test_bad_settings_give_one_line_and_exit_2(tmp_path, trained, args, message):
    data, run = trained
    args = [str(data) if a == "DATA" else str(run) if a == "RUN" else a for a in args]
    result = cli(*args, "--out", str(tmp_path / "new")) if args[0] == "train" else cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
