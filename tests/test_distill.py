"""Knowledge distillation: the loss, the teacher's input normalisation, and a student taught by a teacher alone."""

import pytest
import torch

from reslab.data import DataOptions, Normalizer, load_dataset
from reslab.errors import ConfigError
from reslab.train.checkpoint import load_checkpoint
from reslab.train.distill import distillation_loss, input_map, load_teacher, teacher_checkpoint
from reslab.train.loop import fit

from test_train import tiny_config

pytest.importorskip("sklearn")


def test_distillation_loss_is_the_tempered_kl_divergence():
    student, teacher, t = torch.randn(5, 4), torch.randn(5, 4), 3.0
    p = torch.softmax(teacher / t, 1)
    q = torch.softmax(student / t, 1)
    by_hand = (p * (p.log() - q.log())).sum(1).mean() * t * t
    torch.testing.assert_close(distillation_loss(student, teacher, t), by_hand)
    assert distillation_loss(teacher, teacher, t).abs() < 1e-6
    assert distillation_loss(student, teacher, t) > 0


def test_teacher_inputs_are_renormalised_to_its_own_statistics():
    images = torch.randint(0, 256, (40, 3, 6, 6), dtype=torch.uint8)
    student = Normalizer.fit(images)
    teacher = Normalizer.fit(images[:7], "pixel")
    scale, shift = input_map(student, teacher)
    torch.testing.assert_close(student(images) * scale + shift, teacher(images), atol=1e-5, rtol=1e-5)
    assert input_map(student, Normalizer.fit(images)) is None  # same statistics: the batch as it is


def test_bundled_models_are_teachers_by_name():
    checkpoint = teacher_checkpoint("resnet56")
    assert checkpoint.spec.depth == 56 and checkpoint.classes[3] == "cat"


def test_a_student_taught_by_the_teacher_alone_learns_the_task(tmp_path):
    teacher = fit(tiny_config(tmp_path / "teacher", epochs=5), quiet=True)
    assert teacher.status == "finished"
    # The teacher as training runs it (BN folded, inputs renormalised from another normaliser) gives
    # the logits of the saved network on its own normalisation.
    checkpoint = load_checkpoint(tmp_path / "teacher")  # best.pt, as the teacher option reads a run folder
    data = load_dataset("digits", "val", DataOptions())
    other = Normalizer.fit(data.images, "pixel")
    loaded = load_teacher(str(tmp_path / "teacher"), data, other, torch.device("cpu"), torch.channels_last)
    with torch.no_grad():
        expected = checkpoint.build_model()(checkpoint.normalizer(data.images))
    torch.testing.assert_close(loaded.logits(other(data.images)), expected, atol=1e-4, rtol=1e-4)
    # distill_weight 1: the labels are never used, so whatever the student learns came through the teacher.
    student = fit(tiny_config(tmp_path / "student", epochs=4, seed=1, teacher=str(tmp_path / "teacher"),
                              distill_weight=1.0), quiet=True)
    assert student.status == "finished"
    assert student.history[-1]["eval_error"] < 0.3  # chance: 0.9; measured 0.06 (teacher 0.06)


def test_a_teacher_of_other_classes_is_refused(tmp_path, tiny_cifar):
    fit(tiny_config(tmp_path / "digits", epochs=1), quiet=True)
    config = tiny_config(tmp_path / "student", data="cifar10", data_root=str(tiny_cifar), teacher=str(tmp_path / "digits"))
    with pytest.raises(ConfigError, match="its classes"):
        fit(config, quiet=True)
