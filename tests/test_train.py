"""Training: a real short run, resume equivalence, checkpoints, schedules, and bad input."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reslab.errors import CheckpointError, ConfigError
from reslab.fileio import atomic_torch_save
from reslab.checkpoint import load_checkpoint
from reslab.train.config import parse_overrides, resolve
from reslab.train.loop import fit, resume_run
from reslab.train.schedules import Schedule, milestone_steps, schedule_for

from conftest import cli, run_bundle_script

pytest.importorskip("sklearn")  # the digits dataset: real data, no download

TIMING = {"images_per_s", "epoch_time_s", "wall_time_s"}


def tiny_config(out, **overrides):
    """ResNet-8 on the 8x8 digits: a real run in a few seconds."""
    values = dict(model="resnet", model_options={"depth": 8}, data="digits", epochs=3, batch_size=64,
                  lr=0.1, out=str(out), eval_batch_size=256)
    values.update(overrides)
    return resolve("fast", overrides=values)


def strip_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def test_short_run_learns(tmp_path):
    result = fit(tiny_config(tmp_path / "run", epochs=6), quiet=True)
    assert result.status == "finished"
    history = result.history
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["eval_error"] < 0.35  # chance is 0.9
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "curves.png",
                 "summary.md", "summary.json"):
        assert (tmp_path / "run" / name).exists(), name
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"train_error", "eval_error", "lr", "images_per_s", "wall_time_s"} <= set(rows[0])
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 7


def test_interrupted_then_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
    whole = fit(tiny_config(tmp_path / "whole"), quiet=True)
    stopped = fit(tiny_config(tmp_path / "split"), quiet=True, should_stop=lambda step: step == 37)
    assert stopped.status == "interrupted" and len(stopped.history) == 1  # mid-epoch 2 (25 steps/epoch)
    assert load_checkpoint(tmp_path / "split" / "last.pt").progress["step"] == 37
    resumed = resume_run(tmp_path / "split", quiet=True)
    assert resumed.status == "finished"
    assert strip_timing(resumed.history) == strip_timing(whole.history)
    a = load_checkpoint(tmp_path / "whole" / "last.pt").model_state
    b = load_checkpoint(tmp_path / "split" / "last.pt").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_started_from_other_weights_records_their_file_in_run_json_not_the_config(tmp_path):
    import yaml

    from reslab.fileio import sha256

    fit(tiny_config(tmp_path / "first", epochs=1), quiet=True)
    fit(tiny_config(tmp_path / "second", epochs=1, init_from=str(tmp_path / "first")), quiet=True)
    facts = json.loads((tmp_path / "second" / "run.json").read_text())
    assert facts["init_from"]["sha256"] == sha256(tmp_path / "first" / "best.pt")  # the run folder's file
    assert facts["init_from"]["file"] == str((tmp_path / "first" / "best.pt").resolve())
    assert facts["run_dir"] == str((tmp_path / "second").resolve())
    config = yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())
    assert config["init_from"] == str(tmp_path / "first") and "init_from_sha256" not in config
    # Another network than the file's is refused in one line naming both (and nothing is trained).
    with pytest.raises(CheckpointError, match="holds resnet.*but this run trains plain"):
        fit(tiny_config(tmp_path / "third", epochs=1, init_from=str(tmp_path / "first"), model="plain",
                        model_options={"depth": 8}), quiet=True)
    assert not (tmp_path / "third").exists()


def test_checkpoint_round_trip(tmp_path):
    fit(tiny_config(tmp_path / "run", epochs=1), quiet=True)
    ckpt = load_checkpoint(tmp_path / "run")  # a run folder resolves to best.pt
    assert ckpt.path.name == "best.pt"
    assert ckpt.classes == [str(i) for i in range(10)] and ckpt.input_size == 8
    assert ckpt.spec.depth == 8 and ckpt.spec.in_channels == 1
    model = ckpt.build_model()
    again = load_checkpoint(ckpt.path).build_model()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert ckpt.optimizer_state is not None and ckpt.config["data"] == "digits"


def test_paper_recipe_is_sec_4_2():
    c = resolve("paper", overrides={"model": "resnet56"})
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size) == ("sgd", 0.1, 0.9, 1e-4, 128)
    assert (c.iterations, c.milestones, c.warmup_until_error) == (64_000, [0.5, 0.75], None)
    assert resolve("paper", overrides={"model": "resnet110"}).warmup_until_error == 0.8
    s = schedule_for(c, c.iterations)
    assert [s(t) for t in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert s(10, warming_up=True) == 0.01
    # Shortened with --epochs, the milestones stay at half and three quarters of the run.
    short = schedule_for(resolve("paper", overrides={"epochs": 10, "iterations": None}), 3520)
    assert [short(t) for t in (1759, 1760, 2639, 2640)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    for bad in ([0.5, 30_000], [0, 100], "0.5", [0.75, 0.5]):
        with pytest.raises(ConfigError, match="either all steps .* or all fractions"):
            resolve("paper", overrides=parse_overrides([f"milestones={bad}"]))
    assert resolve("paper", overrides=parse_overrides(["milestones=[0.25,0.5]"])).milestones == [0.25, 0.5]
    with pytest.raises(ConfigError, match="cpu_bf16 must be auto, true or false, got 'maybe'"):
        resolve("fast", overrides=parse_overrides(["cpu_bf16=maybe"]))
    assert resolve("fast", overrides=parse_overrides(["augment=false"])).augment is False
    # Old configs with steps keep their meaning; fractions of a tiny run stay inside it.
    assert milestone_steps([32_000, 48_000], 1000) == (32_000, 48_000)
    assert milestone_steps([0.5, 0.75], 3) == (2, 2) and milestone_steps([0.01], 10) == (1,)


def test_onecycle_and_cosine_shapes():
    s = Schedule("onecycle", 0.2, 1000, warmup_steps=150, warmup_start_factor=0.1)
    assert s(0) == pytest.approx(0.02) and s(150) == pytest.approx(0.2)
    assert s(75) == pytest.approx(0.11) and s(999) < 0.001 and s(575) == pytest.approx(0.1)
    c = Schedule("cosine", 1.0, 100)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)


def test_paper_warmup_ends_when_training_error_drops(tmp_path):
    config = tiny_config(tmp_path / "run", epochs=3, schedule="constant", warmup_until_error=0.85, warmup_lr=0.01)
    result = fit(config, quiet=True)
    progress = load_checkpoint(tmp_path / "run" / "last.pt").progress
    assert progress["warming_up"] is False
    assert result.history[-1]["lr"] == pytest.approx(0.1)


def test_config_precedence_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: fast\nlr: 0.3\nbatch_size: 64\n")
    c = resolve(file=path, overrides={"lr": "0.05"})
    assert c.recipe == "fast" and c.lr == 0.05 and c.batch_size == 64 and c.nesterov is True
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve(overrides={"learning_rate": "0.1"})
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve("slow")
    with pytest.raises(ConfigError, match="schedule"):
        resolve(overrides={"schedule": "step"})
    path.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(file=path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # lr jumps by 1e12 when epoch 2 begins: the loss blows up there.
    config = tiny_config(tmp_path / "run", epochs=3, schedule="multistep", milestones=[25], gamma=1e12)
    result = fit(config, quiet=True)
    assert result.status == "diverged" and "last good checkpoint" in result.message
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.progress["step"] == 25
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values() if v.is_floating_point())


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_torch_save({"v": torch.ones(3)}, target)

    def broken_save(obj, f):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_torch_save({"v": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_bad_checkpoints_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a reslab checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a run folder"):
        resume_run(tmp_path)


def run_cli(*args):
    return cli(*args)  # in this process: a new Python per call would cost seconds of imports each


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    result = run_cli("train", "--recipe", "fast", "--model", "resnet", "--set", "model_options.depth=8", "--data",
                     "digits", "--epochs", "4",
                     "--batch-size", "64", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "final eval error" in result.stdout
    return out


def test_cli_eval_predict_export(trained, tmp_path):
    result = run_cli("eval", str(trained), "--json", "--confusion-png", str(tmp_path / "cm.png"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["examples"] == 179 and 0 <= data["top1_error"] < 0.5 and len(data["confusion"]) == 10
    half = run_cli("eval", str(trained), "--json", "--precision", "bfloat16")
    assert half.returncode == 0, half.stderr
    half = json.loads(half.stdout)
    assert half["precision"] == "bfloat16" and abs(half["top1_error"] - data["top1_error"]) <= 2 / 179
    assert half["loss"] != data["loss"]  # it really ran in bf16
    # Digits train without flips (a mirrored glyph is another one): flip TTA is refused in one line.
    flipped = run_cli("eval", str(trained), "--tta", "flip")
    assert flipped.returncode == 2 and "trained without mirrored images" in flipped.stderr
    assert "Traceback" not in flipped.stderr
    assert load_checkpoint(trained).trained_with_flips is False
    assert (tmp_path / "cm.png").stat().st_size > 1000
    from PIL import Image

    from reslab.data import load_dataset

    images = load_dataset("digits", "val").images[:4, 0].numpy()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).resize((32, 40)).convert("RGB").save(folder / f"{i}.png")  # any size, any mode
    result = run_cli("predict", str(trained), str(folder), "--top-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    preds = json.loads(result.stdout)
    assert len(preds) == 4 and all(len(p["top"]) == 2 for p in preds)
    assert all(p["top"][0]["probability"] >= p["top"][1]["probability"] for p in preds)
    for fmt, suffix in (("torchscript", ".ts"), ("onnx", ".onnx")):
        result = run_cli("export", str(trained), "--format", fmt, "--out", str(tmp_path / f"m{suffix}"))
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"m{suffix}").exists()
        match = re.search(r"max \|logits difference\| vs PyTorch on 16 digits-val images: (\S+) ", result.stdout)
        assert match, result.stdout
        assert float(match.group(1)) < 1e-4


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "learning_rate=1"], "unknown setting"),
    (["train", "--config", "missing.yaml"], "no such config file"),
    (["train", "--resume", "nowhere"], "not a run folder"),
    (["train", "--data", "no/such/folder", "--epochs", "1"], "no such dataset or folder"),
    (["train", "--model", "resnet21", "--data", "digits", "--epochs", "1"], "unknown model"),
    (["train", "--data", "digits", "--epochs", "1", "--teacher", "missing.pt"], "no such checkpoint or run folder"),
    (["train", "--data", "digits", "--epochs", "1", "--teacher", "t.pt", "--set", "distill_weight=2"],
     "distill_weight must be in [0, 1]"),
    (["train", "--data", "digits", "--epochs", "1", "--set", "lr=fast"], "lr must be a number"),
    (["eval", "missing.pt"], "no such checkpoint"),
    (["predict", "missing.pt", "x.png"], "no such checkpoint"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    result = run_cli(*args, "--out", str(tmp_path / "o")) if args[0] == "train" and "--resume" not in args \
        else run_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_cli_predict_bad_image_and_wrong_data(trained, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    result = run_cli("predict", str(trained), str(tmp_path / "bad.png"))
    assert result.returncode == 2 and "not a readable image" in result.stderr
    result = run_cli("eval", str(trained), "--data", "fashion-mnist")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_new_run_never_overwrites_an_existing_one(tmp_path):
    fit(tiny_config(tmp_path / "run", epochs=1), quiet=True)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(tiny_config(tmp_path / "run", epochs=1), quiet=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_cpu_bf16_autocast_trains_and_differs_from_float32(tmp_path):
    full = fit(tiny_config(tmp_path / "fp32", epochs=2, cpu_bf16=False), quiet=True)
    half = fit(tiny_config(tmp_path / "bf16", epochs=2, cpu_bf16=True), quiet=True)
    assert half.status == "finished" and half.history[-1]["eval_error"] < 0.6  # it learns (10 classes)
    assert half.history[0]["train_loss"] != full.history[0]["train_loss"]  # autocast really ran
    assert load_checkpoint(tmp_path / "bf16" / "last.pt").config["cpu_bf16"] is True


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_auto_trains_in_bf16_only_where_the_cpu_has_it(native, tmp_path, monkeypatch, capsys):
    # Both askers: the choice (setup) and the slow-bf16 warning (inference), whatever this CPU has.
    monkeypatch.setattr("reslab.train.setup.bfloat16_is_fast", lambda device: native)
    monkeypatch.setattr("reslab.inference.bfloat16_is_fast", lambda device: native)
    config = resolve("fast", overrides=parse_overrides(["cpu_bf16=auto"]))
    assert config.cpu_bf16 == "auto" and resolve("fast").cpu_bf16 == "auto"  # the default
    assert resolve("fast", overrides=parse_overrides(["cpu_bf16=false"])).cpu_bf16 is False
    auto = fit(tiny_config(tmp_path / "auto", epochs=1), quiet=False)
    said = "training under bf16 autocast" in capsys.readouterr().err
    forced = fit(tiny_config(tmp_path / "forced", epochs=1, cpu_bf16=native), quiet=True)
    assert said is native
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["cpu_bf16"] is native
    assert "cpu_bf16: auto" in (tmp_path / "auto" / "config.yaml").read_text()  # what was asked, not what it chose
    assert strip_timing(auto.history) == strip_timing(forced.history)  # auto is exactly the arithmetic it chose


def test_an_auto_bf16_run_resumes_in_the_arithmetic_it_started_with(tmp_path, monkeypatch):
    """Stopped on a CPU with native bf16 and resumed on one without, the run is still the bf16 run,
    and run.json keeps the instruction set it started on."""
    monkeypatch.setattr("reslab.train.setup.bfloat16_is_fast", lambda device: True)
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "AVX512")
    whole = fit(tiny_config(tmp_path / "whole", epochs=2), quiet=True)
    fit(tiny_config(tmp_path / "split", epochs=2), quiet=True, should_stop=lambda step: step == 30)
    monkeypatch.setattr("reslab.train.setup.bfloat16_is_fast", lambda device: False)
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "AVX2")
    resumed = resume_run(tmp_path / "split", quiet=True)
    facts = json.loads((tmp_path / "split" / "run.json").read_text())
    assert facts["cpu_bf16"] is True and facts["cpu_capability"] == "AVX512"
    assert strip_timing(resumed.history) == strip_timing(whole.history)


@pytest.mark.cpu_arithmetic
def test_cpu_bf16_auto_asks_the_cpu_itself(tmp_path):
    """Unpatched: what auto chose is what this CPU has (the other tests patch the question)."""
    from reslab.inference import bfloat16_is_fast

    fit(tiny_config(tmp_path / "run", iterations=2), quiet=True)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["cpu_bf16"] is bfloat16_is_fast("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_warns_where_the_cpu_only_emulates_bf16(native, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("reslab.inference.bfloat16_is_fast", lambda device: native)
    fit(tiny_config(tmp_path / "run", iterations=2, cpu_bf16=True), quiet=False)
    warned = "no native bf16 arithmetic" in capsys.readouterr().err
    assert warned is not native


def test_cutout_setting_trains_and_is_checked(tmp_path):
    config = resolve("fast", overrides=parse_overrides(["cutout=4"]))
    assert config.cutout == 4
    for bad in ("-2", "2.5", "true"):
        with pytest.raises(ConfigError, match="cutout must be a whole number"):
            resolve("fast", overrides={"cutout": bad})
    plain = fit(tiny_config(tmp_path / "plain", epochs=1), quiet=True)
    masked = fit(tiny_config(tmp_path / "cutout", epochs=1, cutout=3), quiet=True)
    assert masked.status == "finished"
    assert masked.history[0]["train_loss"] != plain.history[0]["train_loss"]  # the masks reached training
    assert load_checkpoint(tmp_path / "cutout" / "last.pt").config["cutout"] == 3


def test_bundle_script_writes_weights_index_and_a_card_measured_on_the_file(trained, tmp_path):
    from reslab.fileio import sha256

    weights = tmp_path / "weights"
    weights.mkdir()
    result = run_bundle_script(trained, "resnet20", weights)
    assert result.returncode == 0, result.stderr
    index = json.loads((weights / "index.json").read_text())["resnet20"]
    assert index["sha256"] == sha256(weights / index["file"])
    evaluated = json.loads(run_cli("eval", str(weights / index["file"]), "--json").stdout)
    assert index["val_accuracy"] == round(1 - evaluated["top1_error"], 4)
    card = (weights / index["card"]).read_text()
    # The fixture's run chose its arithmetic by this CPU (cpu_bf16 auto); the card says what it chose.
    arithmetic = "bfloat16 autocast" if json.loads((trained / "run.json").read_text())["cpu_bf16"] else "float32"
    assert f"{100 * index['val_accuracy']:.2f}% (top-5" in card and f"4 epochs; {arithmetic}" in card
    assert "val_accuracy_flip_tta" not in index and "trained without mirror images" in card  # digits: no flips
    assert load_checkpoint(weights / index["file"]).optimizer_state is None
    missing = run_bundle_script(tmp_path / "nothing", "resnet20", weights)
    assert missing.returncode == 1 and missing.stderr.strip().endswith("not a finished run (no summary.json)")
    assert "Traceback" not in missing.stderr


def test_flip_tta_evaluates_a_model_trained_on_mirrored_images(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", "resnet", "--set", "model_options.depth=8", "--data", "cifar10",
                     "--data-root", str(tiny_cifar), "--recipe", "fast", "--epochs", "1", "--batch-size", "30",
                     "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(out).trained_with_flips is True
    plain = json.loads(run_cli("eval", str(out), "--data-root", str(tiny_cifar), "--json").stdout)
    flipped = run_cli("eval", str(out), "--data-root", str(tiny_cifar), "--json", "--tta", "flip")
    assert flipped.returncode == 0, flipped.stderr
    flipped = json.loads(flipped.stdout)
    assert flipped["tta"] == "flip" and plain["tta"] == "none"
    assert flipped["examples"] == plain["examples"] == 10 and flipped["loss"] != plain["loss"]


def test_cli_inference_choices_are_the_library_ones(capsys):
    from reslab.cli import build_parser
    from reslab.inference import PRECISIONS, TTA_MODES

    for verb in ("eval", "predict"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([verb, "--help"])
        usage = capsys.readouterr().out
        # int8 is no torch dtype: it runs through ONNX Runtime (reslab/quantize.py).
        for flag, library in (("--precision", [*PRECISIONS, "int8"]), ("--tta", TTA_MODES)):
            listed = re.search(flag + r" \{([^}]*)\}", usage)
            assert listed and listed.group(1).split(",") == list(library), (verb, flag, usage)


def test_mirroring_of_old_checkpoints_is_derived_from_their_data(trained):
    from dataclasses import replace

    from reslab.checkpoint import checkpoint_dataset, mirrored_in_training

    old = replace(load_checkpoint(trained), trained_with_flips=None)  # as written before it was recorded
    digits = checkpoint_dataset(old, None, None, "val")
    assert mirrored_in_training(old) is None
    assert mirrored_in_training(old, digits) is False  # digits are never flipped
    flipped_data = replace(digits, augment=replace(digits.augment, flip=True))
    assert mirrored_in_training(old, flipped_data) is True
    assert mirrored_in_training(replace(old, config={**old.config, "augment": False}), flipped_data) is False


def test_bundle_card_counts_every_epoch_when_the_best_is_not_the_last(trained, tmp_path):
    import shutil
    from dataclasses import replace

    from reslab.checkpoint import save_checkpoint

    def bundle(run):
        weights = tmp_path / "weights"
        weights.mkdir(exist_ok=True)
        return run_bundle_script(run, "resnet20", weights), weights

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    # A best.pt of one epoch in a run of four whose files say epoch 4 was best: refused in one line.
    best = load_checkpoint(run / "best.pt")
    save_checkpoint(replace(best, progress={**best.progress, "history": best.progress["history"][:1]}), run / "best.pt")
    refused, _ = bundle(run)
    assert refused.returncode == 1 and "best.pt is not the best epoch" in refused.stderr
    assert "Traceback" not in refused.stderr
    # As if validation peaked at epoch 1 of 4: the later epochs' records read worse.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows[1:]:
        row["eval_error"] = rows[0]["eval_error"] + 0.05
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "best_eval_error": rows[0]["eval_error"]}))
    result, weights = bundle(run)
    assert result.returncode == 0, result.stderr
    index = json.loads((weights / "index.json").read_text())["resnet20"]
    card = (weights / index["card"]).read_text()
    assert index["epoch"] == 1 and "the weights are those of epoch 1 of 4" in card.lower()
    curve_rows = [line for line in card.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [row.split("|")[1].strip() for row in curve_rows] == ["1", "2", "3", "4"]


def test_the_paper_warmup_follows_the_depth_however_the_network_is_named(tmp_path):
    from reslab.analysis.members import ExperimentSettings, Member, family_net, member_config

    deep = [{"model": "resnet110"}, {"model": "plain1202"}, {"model": "resnet", "model_options": {"depth": 110}},
            {"model": "plain", "model_options": {"depth": 110}}]
    for values in deep:
        assert resolve("paper", overrides=values).warmup_until_error == 0.8, values
    for values in ({"model": "resnet56"}, {"model": "resnet", "model_options": {"depth": 56}}):
        assert resolve("paper", overrides=values).warmup_until_error is None, values
    assert resolve("fast", overrides={"model": "resnet110"}).warmup_until_error is None  # the paper's recipe only
    assert resolve("paper", overrides={"model": "resnet152"}).warmup_until_error is None  # CIFAR's networks only
    spec = tmp_path / "deep.yaml"
    spec.write_text("model: resnet110\nshortcut: B\n")
    assert resolve("paper", overrides={"model": str(spec)}).warmup_until_error == 0.8
    # `reslab experiment table6 --depths 110` names its members by family and depth.
    settings = ExperimentSettings(out=tmp_path / "exp", data="digits", budget=0.001)
    member = Member("resnet110-seed0", "resnet", 110, 0, family_net("resnet", 110))
    assert member_config(settings, member).warmup_until_error == 0.8


def test_a_batch_that_does_not_split_into_micro_batches_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="batch_size 64 does not split into 1 process.* x 3 micro-batch"):
        fit(tiny_config(tmp_path / "run", epochs=1, accumulation=3), quiet=True)
    assert not (tmp_path / "run").exists()  # a run that never started leaves no folder


def test_resume_refuses_another_network_or_dataset_and_keeps_the_run(tmp_path, tiny_cifar):
    import shutil

    import yaml

    fit(tiny_config(tmp_path / "run", epochs=2), quiet=True, should_stop=lambda step: step == 30)
    fit(tiny_config(tmp_path / "plain", epochs=1, model="plain"), quiet=True)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    own = (tmp_path / "run" / "last.pt").read_bytes()
    shutil.copy(tmp_path / "plain" / "last.pt", tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match=r"last.pt holds plain8, but this run trains resnet8"):
        resume_run(tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    (tmp_path / "run" / "last.pt").write_bytes(own)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({**config, "data": "cifar10",
                                                                  "data_root": str(tiny_cifar)}))
    with pytest.raises(CheckpointError, match=r"was trained on digits \(10 classes, 1-channel 8px images\), not on "
                                              r"cifar10\S* \(10 classes, 3-channel 32px"):
        resume_run(tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == own


def test_a_run_folder_trains_in_one_process_at_a_time(tmp_path):
    from reslab.train.run_lock import RunLock

    fit(tiny_config(tmp_path / "run", epochs=2), quiet=True, should_stop=lambda step: step == 5)
    held = RunLock(tmp_path / "run")  # as another `reslab train --resume` of this run would hold it
    try:
        with pytest.raises(ConfigError, match=r"run is being trained by reslab process \d+"):
            resume_run(tmp_path / "run", quiet=True)
    finally:
        held.release()
    assert load_checkpoint(tmp_path / "run" / "last.pt").progress["step"] == 5  # untouched by the refused one
    assert resume_run(tmp_path / "run", quiet=True).status == "finished"  # the lock goes with its holder


def test_a_loss_that_diverges_in_the_first_epoch_says_nothing_was_kept(tmp_path):
    result = fit(tiny_config(tmp_path / "run", epochs=2, schedule="constant", lr=1e12, warmup=0), quiet=True)
    assert result.status == "diverged" and "before its first checkpoint" in result.message
    assert "last good checkpoint" not in result.message and not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("flags, message", [
    (["--threads", "0"], "threads must be 1 or more, got 0"),
    (["--threads", "-1"], "threads must be 1 or more, got -1"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--out", "FILE/run"], "cannot write the run folder"),
])
def test_train_flags_that_cannot_work_are_one_line(flags, message, tmp_path):
    from conftest import cli

    (tmp_path / "FILE").write_text("a user's file\n")
    flags = [str(tmp_path / f) if f.startswith("FILE") else f for f in flags]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "run")]
    result = cli("train", "--data", "digits", "--model", "resnet", "--set", "model_options.depth=8", "--epochs", "1",
                 *out, *flags)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (tmp_path / "FILE").read_text() == "a user's file\n"


def test_a_checkpoints_progress_is_a_typed_record():
    from reslab.train.state import RunState

    state = RunState(step=7, epoch=1, batch=2, history=[{"epoch": 1}])
    assert RunState.from_dict(state.to_dict()) == state
    with pytest.raises(CheckpointError, match="unknown progress field"):
        RunState.from_dict({**state.to_dict(), "stepp": 3})


KILLABLE = ["--model", "resnet", "--set", "model_options.depth=8", "--data", "digits", "--recipe", "fast",
            "--epochs", "3", "--batch-size", "64", "--set", "threads=1", "--set", "cpu_bf16=false", "--quiet"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The whole run the killed ones must end equal to (one thread: the sums in one order)."""
    threads = torch.get_num_threads()
    try:
        out = tmp_path_factory.mktemp("whole") / "run"
        assert cli("train", *KILLABLE, "--out", str(out)).returncode == 0
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(out / "last.pt")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill-9", "SIGTERM", "Ctrl-C"])
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(sig, uninterrupted, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "reslab", "train", *KILLABLE, "--out", str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)  # within epoch 2
    stdout, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:  # the kernel ends it wherever it is: epoch 1's checkpoint stays, whole
        assert proc.returncode == -sig and load_checkpoint(killed / "last.pt").progress["batch"] == 0
    else:  # Ctrl-C, or SIGTERM (a scheduler's, docker stop): saved at the next step, exit 128 + the signal
        assert proc.returncode == 128 + sig, stderr
        assert "Traceback" not in stderr and stderr.strip() == ""  # --quiet: the one line is on stdout
        assert stdout.strip().splitlines()[-1].endswith(f"resume with --resume {killed}")
    threads = torch.get_num_threads()
    try:
        resumed = resume_run(killed, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert strip_timing(resumed.history) == strip_timing(uninterrupted.progress["history"])
    mine = load_checkpoint(killed / "last.pt").model_state
    assert all(torch.equal(mine[k], uninterrupted.model_state[k]) for k in mine)


def test_the_warmup_is_one_setting_and_old_names_keep_their_meaning(tmp_path):
    assert resolve("fast").warmup == 0.15 and resolve("paper").warmup == 0
    assert schedule_for(resolve("fast"), 1000).warmup_steps == 150
    assert schedule_for(resolve("fast", overrides={"warmup": "40"}), 1000).warmup_steps == 40  # steps from 1 on
    assert resolve("fast", overrides={"warmup_fraction": "0"}).warmup == 0  # as the bundled card's command says
    old = tmp_path / "old.yaml"
    for text, expected in (("warmup_fraction: 0\n", 0), ("warmup_iterations: 500\nwarmup_fraction: 0.1\n", 500),
                           ("warmup_iterations: 0\nwarmup_fraction: 0.05\n", 0.05)):
        old.write_text(text)
        assert resolve("fast", file=old).warmup == expected, text
    with pytest.raises(ConfigError, match="warmup must be >= 0"):
        resolve("fast", overrides={"warmup": "-1"})


def test_a_run_of_the_previous_version_resumes_with_its_recorded_files_checked(tmp_path):
    import shutil
    from dataclasses import replace

    import yaml

    from reslab.checkpoint import save_checkpoint
    from reslab.fileio import sha256

    fit(tiny_config(tmp_path / "plain", epochs=1, model="plain"), quiet=True)
    fit(tiny_config(tmp_path / "teacher", epochs=1), quiet=True)
    teacher = Path(shutil.copy(tmp_path / "teacher" / "best.pt", tmp_path / "t.pt"))
    run = tmp_path / "old"
    fit(tiny_config(run, epochs=2, model=None, model_options={}, init_from=str(tmp_path / "plain"),
                    teacher=str(teacher)), quiet=True, should_stop=lambda step: step == 3)
    # As the previous version wrote its runs: a model always named (here not the file's network), the
    # teacher +-joined with its checksum and the start file's checksum in config.yaml, none in run.json.
    config = yaml.safe_load((run / "config.yaml").read_text())
    start = json.loads((run / "run.json").read_text())["init_from"]["sha256"]
    config.update(model="resnet", teacher=str(teacher.resolve()), teacher_sha256=sha256(teacher),
                  init_from_sha256=start, warmup_fraction=config.pop("warmup"))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "run.json").write_text(json.dumps({"processes": 1}))
    original = teacher.read_bytes()
    trained = load_checkpoint(teacher)
    save_checkpoint(replace(trained, model_state={k: v + 1 if v.is_floating_point() else v
                                                  for k, v in trained.model_state.items()}), teacher)
    with pytest.raises(CheckpointError, match="has changed since this run started"):
        resume_run(run, quiet=True)
    teacher.write_bytes(original)
    resumed = resume_run(run, quiet=True)
    assert resumed.status == "finished" and len(resumed.history) == 2
    assert load_checkpoint(run / "last.pt").spec.name == "plain8"  # the file's network, as it always trained
