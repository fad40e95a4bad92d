"""int8 inference and today's export formats: torch.export (.pt2), ONNX with a batch of any size, and
the int8 ONNX file quantized from the BN-folded model (reslab/quantize.py, reslab/onnxio.py,
reslab/export.py). One tiny network, briefly trained on images whose class is where a bright square
sits, so that its int8 predictions can be compared with float32 ones that mean something."""

import json
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli
from PIL import Image

import reslab
from reslab.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from reslab.data.augment import Normalizer, preprocess_eval

SIZE = 16
CLASSES = ["q1-top-left", "q2-top-right", "q3-bottom-left", "q4-bottom-right"]  # sorted, as folder classes are


def square_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 noise with a bright 6x6 square in the quadrant named by the label."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 120, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % len(CLASSES)
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 2) * 8 + 1, (label % 2) * 8 + 1
        images[i, :, top:top + 6, left:left + 6] = 200 + torch.randint(0, 56, (3, 1, 1), dtype=torch.uint8, generator=g)
    return images, labels


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On a busy 2-core machine two threads wait on each other: training this net took 10x as long.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ResNet-8 (widths 8/16/32) trained for 40 steps, saved as a checkpoint of an image-folder dataset
    written beside it (so int8 calibration finds the training split), and held-out images."""
    root = tmp_path_factory.mktemp("int8")
    images, labels = square_images(320, seed=1)
    data = root / "squares"
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        (data / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(data / CLASSES[label] / f"{i:03d}.png")
    normalizer = Normalizer.fit(images)
    torch.manual_seed(0)
    model = reslab.create_model("resnet", depth=8, num_classes=4, widths=(8, 16, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = preprocess_eval(images, normalizer)
    for step in range(40):
        batch = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = F.cross_entropy(model(x[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    checkpoint = Checkpoint(spec=model.spec, classes=CLASSES, normalizer=normalizer, input_size=SIZE,
                            model_state=model.state_dict(), config={"data": str(data), "data_root": str(root)},
                            trained_with_flips=False)
    path = save_checkpoint(checkpoint, root / "tiny.pt")
    held_out, held_labels = square_images(64, seed=2)
    return {"path": path, "root": root, "data": data, "x": preprocess_eval(held_out, normalizer),
            "labels": held_labels}


def _float_logits(trained, x):
    with torch.inference_mode():
        return load_checkpoint(trained["path"]).build_model()(x)


def test_the_tiny_model_learned_its_task(trained):
    accuracy = (_float_logits(trained, trained["x"]).argmax(1) == trained["labels"]).float().mean()
    assert accuracy >= 0.9  # else the int8 comparisons below would compare noise


def test_pt2_is_the_default_and_round_trips_at_any_batch(trained, tmp_path):
    result = cli("export", trained["path"], "--out", tmp_path / "m.pt2")
    assert result.returncode == 0, result.stderr
    assert "(pt2)" in result.stdout and "(torch.export.load, batch sizes 1, 7, 16)" in result.stdout
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = trained["x"]
    for n in (1, 7, 16, 5):
        assert torch.allclose(program(x[:n]), _float_logits(trained, x[:n]), atol=1e-5)


def test_onnx_takes_any_batch_size(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from reslab.onnxio import OnnxRuntimeModel

    result = cli("export", trained["path"], "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr
    run = OnnxRuntimeModel(str(tmp_path / "m.onnx"))
    x = trained["x"]
    for n in (1, 7, 16, 33):
        assert torch.allclose(run(x[:n]), _float_logits(trained, x[:n]), atol=1e-4)


@pytest.fixture(scope="module")
def int8_file(trained):
    pytest.importorskip("onnxruntime")
    out = trained["root"] / "tiny.int8.onnx"
    result = cli("export", trained["path"], "--format", "onnx-int8", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_int8_export_is_quantized_and_runs_at_batch_1_and_7(trained, int8_file):
    import onnx

    from reslab.onnxio import OnnxRuntimeModel

    path, stdout = int8_file
    assert "calibrated on" in stdout and "batch sizes 1, 7, 16" in stdout
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 7  # every conv of a ResNet-8 holds int8 weights
    # 7-bit weights (reduce_range): safe on CPUs without VNNI.
    assert max(np.abs(onnx.numpy_helper.to_array(t)).max() for t in int8_weights) <= 64
    run = OnnxRuntimeModel(str(path))
    x = trained["x"]
    for n in (1, 7):
        assert run(x[:n]).shape == (n, 4)
    assert torch.equal(run(x[:7])[3], run(x[3:4])[0])  # a batch's rows do not depend on each other


def test_int8_logits_stay_close_to_float(trained, int8_file):
    from reslab.onnxio import OnnxRuntimeModel

    x = trained["x"]
    want, got = _float_logits(trained, x), OnnxRuntimeModel(str(int8_file[0]))(x)
    agree = (want.argmax(1) == got.argmax(1)).float().mean()
    assert agree >= 0.95
    assert (got - want).abs().max() <= 0.1 * want.abs().max()


def test_eval_and_predict_in_int8(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    exact = cli("eval", trained["path"], "--json")
    quantized = cli("eval", trained["path"], "--json", "--precision", "int8")
    assert exact.returncode == 0 and quantized.returncode == 0, quantized.stderr
    exact, quantized = json.loads(exact.stdout), json.loads(quantized.stdout)
    assert quantized["precision"] == "int8" and "images" in quantized["calibration"]
    assert quantized["examples"] == exact["examples"] and quantized["loss"] != exact["loss"]
    assert abs(quantized["top1_error"] - exact["top1_error"]) <= 2 / exact["examples"]
    # predict, calibrated on a folder of images instead of the training split
    folder = next(trained["data"].iterdir())
    result = cli("predict", trained["path"], folder, "--precision", "int8", "--calibration", trained["data"], "--json")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert sum(p["top"][0]["class"] == folder.name for p in predictions) >= 0.9 * len(predictions)


def test_eval_and_predict_compiled_agree_with_eager(trained):
    from reslab.inference import has_cxx_compiler

    if not has_cxx_compiler():
        pytest.skip("torch.compile needs a C++ compiler")
    eager = json.loads(cli("eval", trained["path"], "--json").stdout)
    result = cli("eval", trained["path"], "--json", "--compile")
    assert result.returncode == 0, result.stderr
    compiled = json.loads(result.stdout)
    assert compiled["examples"] == eager["examples"]
    assert abs(compiled["loss"] - eager["loss"]) < 1e-4 and compiled["top1_error"] == eager["top1_error"]
    folder = next(trained["data"].iterdir())
    plain = json.loads(cli("predict", trained["path"], folder, "--json").stdout)
    result = cli("predict", trained["path"], folder, "--json", "--compile")
    assert result.returncode == 0, result.stderr
    assert [p["top"][0]["class"] for p in json.loads(result.stdout)] == [p["top"][0]["class"] for p in plain]


def test_compile_without_a_cxx_compiler_is_one_line(trained, monkeypatch):
    monkeypatch.setattr("reslab.inference.has_cxx_compiler", lambda: False)
    result = cli("eval", trained["path"], "--compile", "--precision", "bfloat16")
    assert result.returncode == 2 and "--compile needs a C++ compiler" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _nan_checkpoint(trained, tmp_path):
    checkpoint = load_checkpoint(trained["path"])
    state = dict(checkpoint.model_state)
    key = next(k for k in state if k.endswith("conv1.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    checkpoint.model_state = state
    return save_checkpoint(checkpoint, tmp_path / "nan.pt")


def _no_data_checkpoint(trained, tmp_path):
    checkpoint = load_checkpoint(trained["path"])
    checkpoint.config = {}
    return save_checkpoint(checkpoint, tmp_path / "nodata.pt")


def _corrupt_folder(trained, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    return folder


@pytest.mark.parametrize("args, message", [
    (lambda t, p: ["eval", t["path"], "--precision", "int8", "--calibration", p / "missing"], "not a folder of images"),
    (lambda t, p: ["predict", t["path"], t["data"], "--precision", "int8", "--calibration", t["path"]],
     "not a folder of images"),
    (lambda t, p: ["export", t["path"], "--format", "onnx-int8", "--calibration", (p / "empty").mkdir() or p / "empty"],
     "no image files in this folder"),
    (lambda t, p: ["export", t["path"], "--format", "onnx-int8", "--calibration", _corrupt_folder(t, p)],
     "not a readable image"),
    (lambda t, p: ["export", _no_data_checkpoint(t, p), "--format", "onnx-int8"], "int8 calibration needs images"),
    (lambda t, p: ["export", _nan_checkpoint(t, p), "--format", "onnx-int8", "--calibration", t["data"]],
     "cannot be quantized"),
    (lambda t, p: ["eval", t["path"], "--precision", "int4"], "invalid choice"),
    (lambda t, p: ["eval", t["path"], "--precision", "int8", "--compile"], "--compile is for float32 and bfloat16"),
    (lambda t, p: ["predict", t["path"], t["data"], "--precision", "int8", "--compile"], "--compile is for float32"),
])
def test_bad_int8_input_is_one_line(trained, tmp_path, args, message):
    pytest.importorskip("onnxruntime")
    result = cli(*args(trained, tmp_path))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.onnx"))


def test_without_onnxruntime_int8_is_one_line(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    for args in (["eval", trained["path"], "--precision", "int8"],
                 ["export", trained["path"], "--format", "onnx-int8", "--out", tmp_path / "m.onnx"]):
        result = cli(*args)
        assert result.returncode == 2 and "needs ONNX Runtime" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_an_export_that_disagrees_with_pytorch_is_not_written(trained, tmp_path, monkeypatch):
    import reslab.export

    def wrong(run, reference, x, sizes):
        return [{"batch": n, "max_abs_diff": 3.0, "top1_agree": 0} for n in sizes]

    monkeypatch.setattr(reslab.export, "check_batches", wrong)
    # The check is the same for every format; TorchScript is the quickest to write.
    result = cli("export", trained["path"], "--format", "torchscript", "--out", tmp_path / "m.ts")
    assert result.returncode == 2 and "differs from PyTorch by up to 3" in result.stderr
    assert not list(tmp_path.iterdir())


def test_torchscript_still_works_and_says_it_is_deprecated(trained, tmp_path):
    result = cli("export", trained["path"], "--format", "torchscript", "--out", tmp_path / "m.ts")
    assert result.returncode == 0, result.stderr
    assert "deprecated" in result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's own, which is the point
        loaded = torch.jit.load(str(tmp_path / "m.ts"))
    assert torch.allclose(loaded(trained["x"][:7]), _float_logits(trained, trained["x"][:7]), atol=1e-5)
