"""Weights that ship with reslab: loading, checksum, cards, and predict out of the box."""

import json
import shutil
from pathlib import Path

import pytest

import reslab
import reslab.models.pretrained as pretrained
from reslab.errors import CheckpointError, SpecError

from conftest import cli

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def test_resnet20_is_bundled_for_predict_out_of_the_box():
    assert "resnet20" in pretrained.available_pretrained()


@pytest.mark.parametrize("name", pretrained.available_pretrained())
def test_every_bundled_model_loads_ready_for_inference_with_its_card(name):
    model = reslab.create_model(name, pretrained=True)
    assert not model.training and model.spec.name == name
    info = pretrained.pretrained_info(name)
    if info["data"] == "cifar10":
        assert model.classes[3] == "cat" and len(model.classes) == 10
    card = (pretrained.WEIGHTS_DIR / info["card"]).read_text()
    for needed in ("Data", "Command", "Seed", "Wall time", "Validation accuracy", "Preprocessing",
                   info["sha256"], f"{100 * info['val_accuracy']:.2f}%"):
        assert needed in card
    if info["data"] == "cifar10":
        assert "JPEG" in card  # the card says the data is a re-encode
    assert pretrained.WEIGHTS_DIR.joinpath(info["file"]).stat().st_size < 5_000_000


def test_bundled_model_classifies_sample_images():
    from reslab.predict import predict

    checkpoint = pretrained.pretrained_checkpoint("resnet20")
    results = predict(checkpoint, [IMAGES / "cat.png", IMAGES / "ship.png"], top_k=1)
    assert [r.top[0][0] for r in results] == ["cat", "ship"]


def test_checksum_is_verified(tmp_path, monkeypatch):
    for f in pretrained.WEIGHTS_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    info = pretrained.pretrained_info("resnet20")
    blob = bytearray((tmp_path / info["file"]).read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / info["file"]).write_bytes(bytes(blob))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        pretrained.pretrained_checkpoint("resnet20")


def test_missing_weights_are_one_clear_error():
    with pytest.raises(SpecError, match="no bundled weights for 'resnet1202'"):
        reslab.create_model("resnet1202", pretrained=True)
    with pytest.raises(SpecError, match="num_classes"):
        reslab.create_model("resnet20", pretrained=True, num_classes=100)


def test_cli_predict_without_checkpoint_and_models_column():
    run = cli("predict", str(IMAGES / "cat.png"), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)[0]["top"][0]["class"] == "cat"
    run = cli("predict", "--model", "resnet110", str(IMAGES / "cat.png"))
    assert run.returncode == 2 and "no bundled weights for 'resnet110'" in run.stderr
    run = cli("models", "--json", "--family", "cifar")
    flags = {r["name"]: r["pretrained"] for r in json.loads(run.stdout)}
    assert flags["resnet20"] is True and flags["resnet110"] is False


def test_bfloat16_predictions_match_float32_on_the_sample_images():
    from reslab.predict import predict

    checkpoint = pretrained.pretrained_checkpoint("resnet20")
    images = [IMAGES / "cat.png", IMAGES / "ship.png", IMAGES / "horse.png"]
    full = predict(checkpoint, images, top_k=3)
    half = predict(checkpoint, images, top_k=3, precision="bfloat16")
    for f, h in zip(full, half):
        assert abs(f.top[0][1] - dict(h.top).get(f.top[0][0], 0.0)) < 0.03  # bf16 keeps about 3 significant digits
        if f.top[0][1] - f.top[1][1] > 0.03:  # a clear winner stays the winner (whichever samples have one)
            assert f.top[0][0] == h.top[0][0]
    assert sum(f.top[0][1] - f.top[1][1] > 0.03 for f in full) >= 2  # cat and ship are clear
    run = cli("predict", str(IMAGES / "ship.png"), "--precision",
                          "bfloat16", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)[0]["top"][0]["class"] == "ship"


def test_flip_tta_predicts_an_image_and_its_mirror_alike(tmp_path):
    from PIL import Image, ImageOps

    from reslab.predict import predict

    ImageOps.mirror(Image.open(IMAGES / "cat.png")).save(tmp_path / "mirrored.png")
    checkpoint = pretrained.pretrained_checkpoint("resnet20")
    pair = [IMAGES / "cat.png", tmp_path / "mirrored.png"]
    plain = predict(checkpoint, pair, top_k=10)
    flipped = predict(checkpoint, pair, top_k=10, tta="flip")
    assert dict(plain[0].top) != pytest.approx(dict(plain[1].top), abs=1e-4)
    assert dict(flipped[0].top) == pytest.approx(dict(flipped[1].top), abs=1e-4)
    assert flipped[0].top[0][0] == "cat"  # the sample every bundled model gets right
