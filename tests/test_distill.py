"""Knowledge distillation: the loss, the teacher's view of each batch, checks on the teacher, and
students taught by a trained and by an untrained teacher alone."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from reslab.data import Batch, DataOptions, Normalizer, TrainLoader, load_dataset
from reslab.data.arrays import ImageArrays
from reslab.errors import CheckpointError, ConfigError
from reslab.models.resnet import ResNet
from reslab.checkpoint import load_checkpoint, save_checkpoint
from reslab.train.config import resolve
from reslab.train.distill import (CachedTeacher, Distillation, Teacher, cached_teacher_logits, check_teacher,
                                  distillation_loss, load_teacher, teacher_checkpoint)
from reslab.train.config import teacher_sources
from reslab.train.objective import CrossEntropy


def _tiny_config(*args, **kwargs):
    pytest.importorskip("sklearn")  # the digits dataset
    from test_train import tiny_config

    return tiny_config(*args, **kwargs)


def _fit(*args, **kwargs):
    from reslab.train.loop import fit

    return fit(*args, **kwargs)


def test_distillation_loss_is_the_tempered_kl_divergence():
    student, teacher, t = torch.randn(5, 4), torch.randn(5, 4), 3.0
    p = torch.softmax(teacher / t, 1)
    q = torch.softmax(student / t, 1)
    by_hand = (p * (p.log() - q.log())).sum(1).mean() * t * t
    torch.testing.assert_close(distillation_loss(student, teacher, t), by_hand)
    assert distillation_loss(teacher, teacher, t).abs() < 1e-6
    assert distillation_loss(student, teacher, t) > 0


def test_the_objectives_weigh_labels_against_the_teacher():
    logits, teacher = torch.randn(6, 3), torch.randn(6, 3)
    labels, other_labels = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 2, 1, 1, 1])

    def batch(y):
        return Batch(torch.zeros(6, 1, 1, 1), y, torch.arange(6), torch.zeros(6, 1, 1, 1))

    def teaches(weight):
        return Distillation(lambda b: teacher, 0.1, weight, 4.0)

    ce = F.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(CrossEntropy(0.1)(logits, batch(labels)), ce)
    torch.testing.assert_close(teaches(0.0)(logits, batch(labels)), ce)
    torch.testing.assert_close(teaches(1.0)(logits, batch(labels)), teaches(1.0)(logits, batch(other_labels)))
    torch.testing.assert_close(teaches(0.25)(logits, batch(labels)),
                               0.75 * ce + 0.25 * distillation_loss(logits, teacher, 4.0))


def test_the_teacher_sees_the_same_augmented_images_under_its_own_normalisation():
    data = ImageArrays(torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64) % 4,
                       list("abcd"), "toy")  # CIFAR's augmentation: pad 4, crop, flip
    student, teacher = Normalizer.fit(data.images, "pixel"), Normalizer.fit(data.images[:9])
    both = list(TrainLoader(data, 16, student, seed=3, cutout_size=3, teacher_normalizer=teacher).epoch(1))
    alone = list(TrainLoader(data, 16, teacher, seed=3, cutout_size=3).epoch(1))
    plain = list(TrainLoader(data, 16, student, seed=3, cutout_size=3).epoch(1))
    for batch, by_itself, unchanged in zip(both, alone, plain):
        # What the teacher's own run would see, and the student's batch is unchanged.
        assert torch.equal(batch.teacher_images, by_itself.images) and torch.equal(batch.labels, by_itself.labels)
        assert torch.equal(batch.images, unchanged.images)
        assert unchanged.teacher_images is unchanged.images  # one normalisation: one view, not a copy
    assert teacher.same_as(Normalizer.fit(data.images[:9])) and not teacher.same_as(student)


def test_cached_targets_travel_with_their_images_in_every_shard_and_micro_batch():
    # Image i is filled with the value i, and its target row holds i: a batch pairs them or it does not.
    n = 48
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    data = ImageArrays(images, torch.arange(n) % 4, list("abcd"), "toy")
    identity = Normalizer(torch.zeros(3), torch.full((3,), 1 / 255))  # x -> x
    cached = CachedTeacher(torch.arange(n, dtype=torch.float32).view(n, 1).repeat(1, 4))
    seen = []
    for rank in range(2):
        loader = TrainLoader(data, 16, identity, seed=5, rank=rank, world_size=2, cutout_size=0)
        for batch in loader.epoch(2):
            for part in (batch, batch.part(1, 2)):
                t = cached(part)
                # Crops (pad 4) pad with zeros and keep part of the 8x8 image, so its value is its largest pixel.
                assert torch.equal(part.images.amax(dim=(1, 2, 3)).round(), t[:, 0])
                assert torch.equal(part.labels, t[:, 0].long() % 4)
            seen += cached(batch)[:, 0].tolist()
    assert sorted(seen) == list(range(n))  # every image once per epoch (48 = 3 full batches)


class _Brightness(torch.nn.Module):
    """Logits that tell an image from its mirror image: the mean of each row's left and right halves."""

    def forward(self, x):
        half = x.shape[3] // 2
        return torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], 1)


def test_cached_logits_are_the_teachers_on_each_image_and_its_mirror():
    images = torch.randint(0, 256, (7, 3, 4, 6), dtype=torch.uint8)
    normalizer = Normalizer.fit(images)
    teacher = Teacher(_Brightness(), normalizer, ["toy"], [])
    x = normalizer(images)
    plain = cached_teacher_logits(teacher, images, mirrored=False, device=torch.device("cpu"), batch_size=3)
    torch.testing.assert_close(plain, _Brightness()(x))
    both = cached_teacher_logits(teacher, images, mirrored=True, device=torch.device("cpu"), batch_size=3)
    torch.testing.assert_close(both, (_Brightness()(x) + _Brightness()(x.flip(3))) / 2)
    assert not torch.allclose(plain, both)  # the mirror image does count
    torch.testing.assert_close(both[:, 0], both[:, 1])  # left and right halves average out


def test_bundled_models_are_teachers_by_name_and_unknown_names_say_what_exists():
    checkpoint = teacher_checkpoint("resnet56")
    assert checkpoint.spec.depth == 56 and checkpoint.classes[3] == "cat"
    with pytest.raises(CheckpointError, match=r"teacher resnet110: no such .*bundled: resnet20, resnet56"):
        teacher_checkpoint("resnet110")


def _untrained_teacher(trained_path, out):
    trained = load_checkpoint(trained_path)
    torch.manual_seed(123)
    save_checkpoint(replace(trained, model_state=ResNet(trained.spec).state_dict(), optimizer_state=None), out)
    return out


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A trained teacher's run folder (5 epochs of ResNet-8 on digits), shared; tests copy before changing it."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert _fit(_tiny_config(out, epochs=5), quiet=True).status == "finished"
    return out


def test_students_taught_by_a_teacher_alone_learn_what_it_knows(digits_teacher, tmp_path):
    shutil.copytree(digits_teacher, tmp_path / "teacher")
    # As training runs it (BN folded), the teacher gives the saved network's logits.
    checkpoint = load_checkpoint(tmp_path / "teacher")  # best.pt, as --teacher reads a run folder
    data = load_dataset("digits", "val", DataOptions())
    loaded = load_teacher(["t"], [checkpoint], torch.device("cpu"), torch.channels_last)
    with torch.no_grad():
        expected = checkpoint.build_model()(checkpoint.normalizer(data.images))
    torch.testing.assert_close(loaded.logits(checkpoint.normalizer(data.images)), expected, atol=1e-4, rtol=1e-4)
    # distill_weight 1: the labels are never used, so the student knows what the teacher tells it,
    # whether the teacher reads every batch or its outputs were cached once.
    untrained = _untrained_teacher(tmp_path / "teacher" / "best.pt", tmp_path / "untrained.pt")
    for mode, micro in (("online", 1), ("cached", 2)):  # micro-batches slice the cached rows with the images
        taught = _fit(_tiny_config(tmp_path / mode, epochs=3, seed=1, teacher=str(tmp_path / "teacher"),
                                   distill_weight=1.0, teacher_mode=mode, accumulation=micro), quiet=True)
        # chance: 0.9; measured 0.084 online and 0.073 cached after 3 epochs (misled: 0.87 and 0.88 after 2)
        assert taught.history[-1]["eval_error"] < 0.3, mode
        assert load_checkpoint(tmp_path / mode / "last.pt").config["teacher_mode"] == mode
        misled = _fit(_tiny_config(tmp_path / f"misled-{mode}", epochs=2, seed=1, teacher=str(untrained),
                                   distill_weight=1.0, teacher_mode=mode), quiet=True)
        assert misled.history[-1]["eval_error"] > 0.6, mode
    # The config keeps the teacher as given; the run's facts (run.json) record its file and checksum.
    assert load_checkpoint(tmp_path / "online" / "last.pt").config["teacher"] == [str(tmp_path / "teacher")]
    recorded = json.loads((tmp_path / "online" / "run.json").read_text())["teacher"]
    assert [m["file"] for m in recorded] == [str((tmp_path / "teacher" / "best.pt").resolve())]
    assert len(recorded[0]["sha256"]) == 64


def test_a_resumed_run_refuses_a_teacher_that_changed(digits_teacher, tmp_path):
    from reslab.train.loop import resume_run

    teacher = shutil.copy(digits_teacher / "best.pt", tmp_path / "teacher.pt")
    stopped = _fit(_tiny_config(tmp_path / "student", epochs=2, teacher=str(teacher)), quiet=True,
                   should_stop=lambda step: step == 3)
    assert stopped.status == "interrupted"
    _untrained_teacher(teacher, teacher)
    with pytest.raises(CheckpointError, match="has changed since this run started"):
        resume_run(tmp_path / "student", quiet=True)


def test_a_run_with_cached_teacher_outputs_resumes_as_if_never_stopped(digits_teacher, tmp_path):
    from reslab.train.loop import resume_run
    from test_train import strip_timing

    teacher = str(digits_teacher)
    whole = _fit(_tiny_config(tmp_path / "whole", epochs=2, teacher=teacher, teacher_mode="cached"), quiet=True)
    stopped = _fit(_tiny_config(tmp_path / "split", epochs=2, teacher=teacher, teacher_mode="cached"), quiet=True,
                   should_stop=lambda step: step == 30)
    assert stopped.status == "interrupted"
    resumed = resume_run(tmp_path / "split", quiet=True)  # the cache is rebuilt: the same logits
    assert strip_timing(resumed.history) == strip_timing(whole.history)
    online = _fit(_tiny_config(tmp_path / "online", epochs=2, teacher=teacher), quiet=True)
    assert strip_timing(online.history) != strip_timing(whole.history)  # augmented views, other targets


def test_cached_teacher_outputs_include_the_mirror_image_when_training_mirrors(tmp_path, tiny_cifar, monkeypatch):
    import reslab.train.distill as distill

    mirrored = []

    def recording(teacher, images, flip, *args):
        mirrored.append(flip)
        return cached_teacher_logits(teacher, images, flip, *args)

    monkeypatch.setattr(distill, "cached_teacher_logits", recording)
    for augment in (True, False):
        _fit(_tiny_config(tmp_path / str(augment), data="cifar10", data_root=str(tiny_cifar), epochs=1, batch_size=30,
                          teacher="resnet56", teacher_mode="cached", augment=augment), quiet=True)
    assert mirrored == [True, False]


def test_an_ensemble_of_teachers_teaches_the_mean_of_their_logits(tmp_path, monkeypatch):
    folder = tmp_path / "a+b"  # members are a list: a '+' inside a path is no ensemble of its own
    for seed in (0, 1):
        _fit(_tiny_config(folder / f"t{seed}", epochs=1, seed=seed), quiet=True)
    first, second = (load_checkpoint(folder / f"t{seed}") for seed in (0, 1))
    both = [str(folder / "t0"), str(folder / "t1")]
    assert teacher_sources("runs/t0+resnet56") == ["runs/t0", "resnet56"]  # the command line's form
    ensemble = load_teacher(both, [first, second], torch.device("cpu"), torch.contiguous_format)
    alone = [load_teacher(["t"], [c], torch.device("cpu"), torch.contiguous_format) for c in (first, second)]
    x = first.normalizer(load_dataset("digits", "val", DataOptions()).images[:50])
    torch.testing.assert_close(ensemble.logits(x), (alone[0].logits(x) + alone[1].logits(x)) / 2)
    assert not torch.allclose(alone[0].logits(x), alone[1].logits(x), atol=1e-3)  # two different networks
    assert ensemble.files == [{**m.files[0], "source": s} for m, s in zip(alone, both)]
    # A run records both members' files and checksums, and a member that changes is noticed on resume.
    from reslab.train.loop import resume_run

    stopped = _fit(_tiny_config(tmp_path / "student", epochs=1, teacher=both, teacher_mode="cached"), quiet=True,
                   should_stop=lambda step: step == 3)
    assert stopped.status == "interrupted"
    assert load_checkpoint(tmp_path / "student" / "last.pt").config["teacher"] == both
    recorded = json.loads((tmp_path / "student" / "run.json").read_text())["teacher"]
    assert [m["file"] for m in recorded] == [str((folder / f"t{s}" / "best.pt").resolve()) for s in (0, 1)]
    _untrained_teacher(folder / "t1" / "best.pt", folder / "t1" / "best.pt")
    with pytest.raises(CheckpointError, match=r"teacher \S*t1/best.pt \(SHA-256 .* has changed"):
        resume_run(tmp_path / "student", quiet=True)
    # Online, with micro-batches: the ensemble reads each micro-batch like a single teacher.
    online = _fit(_tiny_config(tmp_path / "online", epochs=1, teacher=both, accumulation=2), quiet=True)
    assert online.status == "finished" and online.history[-1]["eval_error"] < 0.9
    monkeypatch.chdir(folder)
    with pytest.raises(CheckpointError, match=r"an ensemble of 2: t0, t9"):
        _fit(_tiny_config(tmp_path / "s3", epochs=1, teacher="t0+t9"), quiet=True)
    # One view of each batch for all members: they must normalise alike.
    other = replace(second, normalizer=Normalizer(second.normalizer.mean + 0.1, second.normalizer.std))
    with pytest.raises(ConfigError, match="must normalise their inputs alike"):
        load_teacher(["t0", "t1"], [first, other], torch.device("cpu"), torch.contiguous_format)
    with pytest.raises(ConfigError, match="an empty name between the '\\+'"):
        teacher_sources("resnet56+")
    plus = shutil.copy(folder / "t0" / "best.pt", tmp_path / "a+b.pt")  # a file whose name has a +
    assert teacher_sources(str(plus)) == [str(plus)]


def test_teachers_that_do_not_fit_the_run_are_refused(digits_teacher, tmp_path, tiny_cifar):
    shutil.copytree(digits_teacher, tmp_path / "digits")
    config = _tiny_config(tmp_path / "s1", data="cifar10", data_root=str(tiny_cifar), teacher=str(tmp_path / "digits"))
    with pytest.raises(ConfigError, match="its classes"):
        _fit(config, quiet=True)
    leaky = load_checkpoint(tmp_path / "digits" / "best.pt")
    leaky.config["train_split"] = "trainval"
    save_checkpoint(leaky, tmp_path / "leaky.pt")
    with pytest.raises(ConfigError, match="has seen the validation images"):
        _fit(_tiny_config(tmp_path / "s2", teacher=str(tmp_path / "leaky.pt")), quiet=True)
    leaky.config.update(train_split="train", val_fraction=0.2)
    save_checkpoint(leaky, tmp_path / "other-split.pt")
    with pytest.raises(ConfigError, match="overlap this run's validation images"):
        _fit(_tiny_config(tmp_path / "s3", teacher=str(tmp_path / "other-split.pt")), quiet=True)
    digits = load_dataset("digits", "train", DataOptions())
    assert check_teacher(load_checkpoint(tmp_path / "digits"), "t", digits, "val", 0.1) is None
    unknown = replace(leaky, config={})  # e.g. weights converted from elsewhere: nothing recorded
    assert "does not record what it was trained on" in check_teacher(unknown, "t", digits, "val", 0.1)
    assert check_teacher(unknown, "t", digits, None, 0.1) is None  # no validation numbers to spoil


def test_distillation_settings_are_checked():
    with pytest.raises(ConfigError, match="need a teacher"):
        resolve("fast", overrides={"distill_weight": "0.5"})
    with pytest.raises(ConfigError, match="need a teacher"):
        resolve("fast", overrides={"teacher_mode": "cached"})
    with pytest.raises(ConfigError, match="teacher_mode must be one of online, cached, got 'offline'"):
        resolve("fast", overrides={"teacher": "t.pt", "teacher_mode": "offline"})
    with pytest.raises(ConfigError, match="distill_temperature must be a number"):
        resolve("fast", overrides={"teacher": "t.pt", "distill_temperature": "warm"})
    assert resolve("fast", overrides={"teacher": "2024-01-01"}).teacher == ["2024-01-01"]  # a name, not a date
    assert resolve("fast", overrides={"teacher": "resnet56+resnet20"}).teacher == ["resnet56", "resnet20"]
    with pytest.raises(ConfigError, match="teacher must be a list"):
        resolve("fast", overrides={"teacher": "[]"})


def test_the_model_card_names_each_member_of_an_ensemble_teacher():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bundle_weights.py"
    spec = importlib.util.spec_from_file_location("bundle_weights", script)
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    assert bundle.teacher_names(["/runs/r56/best.pt", "resnet20"]) == "r56+resnet20"
    assert bundle.teacher_names(["/models/teacher.pt"]) == "teacher.pt"
    assert bundle.teacher_names(["resnet56"]) == "resnet56"
    assert bundle.short_shas(["a" * 64, "b" * 64]) == "aaaaaaaaaaaa...+bbbbbbbbbbbb..."
