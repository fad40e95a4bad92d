"""The optimised inference path gives the plain path's outputs."""

import pytest
import torch
from torch import nn

import reslab
from reslab.inference import fold_batchnorm, optimize_for_inference, with_test_time_augmentation

from conftest import trained_like


def test_folding_removes_every_bn_and_keeps_outputs():
    for name, kw, size in (("resnet20", {}, 32), ("resnet20", {"shortcut": "C"}, 32), ("resnet50", {}, 64)):
        model = trained_like(name, **kw)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        x = torch.randn(4, 3, size, size)
        with torch.inference_mode():
            ref, out = model(x), folded(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # The original is untouched.
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_channels_last_inference_matches():
    model = trained_like("resnet56")
    fast = optimize_for_inference(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_channels_last_training_step_matches_contiguous():
    torch.manual_seed(0)
    a = reslab.create_model("resnet20")
    b = reslab.create_model("resnet20")
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for model, inp in ((a, x), (b, x.contiguous(memory_format=torch.channels_last))):
        nn.functional.cross_entropy(model(inp), y).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_frozen_torchscript_matches_for_any_batch_and_size():
    from reslab.inference import frozen_for_inference

    model = trained_like("resnet20")
    frozen = frozen_for_inference(model, torch.randn(1, 3, 32, 32))
    for batch, size in ((1, 32), (5, 32), (2, 40)):
        x = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            ref, out = model(x), frozen(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bfloat16_inference_takes_and_returns_float32_and_stays_close():
    torch.manual_seed(0)
    model = reslab.create_model("resnet20").eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.inference_mode():
        reference = model(x)
        fast = optimize_for_inference(model, "bfloat16")
        out = fast(x)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    scale = reference.abs().max()
    assert (out - reference).abs().max() < 0.05 * scale  # bf16 keeps ~8 bits of mantissa
    with torch.inference_mode():
        folded32 = optimize_for_inference(model)(x)
    assert (out - folded32).abs().max() > 1e-3  # it really ran in bf16 (float32 folding differs by ~1e-6)
    with pytest.raises(ValueError, match="float32, bfloat16"):
        optimize_for_inference(model, "float16")


def test_flip_tta_averages_the_probabilities_of_an_image_and_its_mirror():
    model = trained_like("resnet20")
    tta = with_test_time_augmentation(model, "flip")
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        out = tta(x)
        expected = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
        # An image and its mirror image get the same prediction; the plain model does not.
        torch.testing.assert_close(tta(x.flip(3)), out, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(x.flip(3)), model(x), atol=1e-3)
    torch.testing.assert_close(out.exp(), expected, rtol=1e-4, atol=1e-6)
    assert with_test_time_augmentation(model, "none") is model
    with pytest.raises(ValueError, match="tta must be one of"):
        with_test_time_augmentation(model, "rotate")
