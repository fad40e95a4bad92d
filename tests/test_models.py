"""The model family: counts, FLOPs, shortcuts, strides, shapes, init and the registry."""

import math

import pytest
import torch
from torch import nn

import reslab
from reslab.errors import SpecError
from reslab.models.blocks import Bottleneck
from reslab.models.shortcuts import ProjectionShortcut, ZeroPadShortcut

# Paper Sec. 4.2 (option A) and torchvision's counts for Table 1's networks.
PAPER_PARAMS = {
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962, "resnet1202": 19_421_274,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}
PAPER_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"])
def test_cifar_param_counts_equal_paper(name):
    assert n_params(reslab.create_model(name)) == PAPER_PARAMS[name]


@pytest.mark.parametrize("name", ["resnet1202", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_large_param_counts_equal_paper(name):
    # summarize() builds on the meta device: the same modules, no memory.
    assert reslab.summarize(name).params == PAPER_PARAMS[name]


def test_real_and_meta_counts_agree():
    assert n_params(reslab.create_model("resnet50")) == reslab.summarize("resnet50").params


@pytest.mark.parametrize("name", list(PAPER_GFLOPS))
def test_imagenet_flops_within_5_percent_of_paper(name):
    gflops = reslab.summarize(name).flops / 1e9
    assert abs(gflops - PAPER_GFLOPS[name]) / PAPER_GFLOPS[name] < 0.05


def test_resnet20_flops_about_41m():
    assert 40e6 < reslab.summarize("resnet20").flops < 42e6


def test_v15_stride_costs_more_flops_but_same_params():
    v1, v15 = reslab.summarize("resnet50"), reslab.summarize("resnet50", bottleneck_stride="3x3")
    assert v1.params == v15.params
    assert v15.flops > v1.flops * 1.04


def test_cifar_stage_shapes_and_strides():
    s = reslab.summarize("resnet20")
    shapes = {r.name: r.output_shape for r in s.rows}
    assert shapes["stem"] == (16, 32, 32)
    assert shapes["stage1"] == (16, 32, 32)
    assert shapes["stage2"] == (32, 16, 16)
    assert shapes["stage3"] == (64, 8, 8)
    assert shapes["head"] == (10,)
    model = reslab.create_model("resnet20")
    first_strides = [stage.blocks[0].conv1.stride for stage in model.stages]
    assert first_strides == [(1, 1), (2, 2), (2, 2)]
    assert all(b.conv1.stride == (1, 1) for stage in model.stages for b in list(stage.blocks)[1:])


def test_imagenet_stage_shapes():
    shapes = [r.output_shape for r in reslab.summarize("resnet50").rows]
    assert shapes == [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7), (1000,)]


def test_depth_counts_weighted_layers():
    for name, depth in [("resnet20", 20), ("resnet110", 110), ("resnet34", 34), ("resnet152", 152)]:
        assert reslab.resolve_spec(name).depth == depth


def test_option_a_pads_evenly_and_subsamples():
    sc = ZeroPadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :8], torch.zeros(2, 8, 4, 4))
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.equal(y[:, 24:], torch.zeros(2, 8, 4, 4))
    assert n_params(sc) == 0


def test_option_a_odd_map_sizes_match_conv_branch():
    model = reslab.create_model("resnet20")
    assert model(torch.randn(2, 3, 33, 33)).shape == (2, 10)


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_shortcut_options_place_projections_where_the_paper_says():
    a, b, c = (reslab.create_model("resnet20", shortcut=o) for o in "ABC")
    assert count(a, ProjectionShortcut) == 0 and count(a, ZeroPadShortcut) == 2
    assert count(b, ProjectionShortcut) == 2 and count(b, ZeroPadShortcut) == 0
    assert count(c, ProjectionShortcut) == 9
    assert n_params(a) < n_params(b) < n_params(c)
    # B adds exactly two 1x1 convs + BN: 16*32 + 2*32 and 32*64 + 2*64.
    assert n_params(b) - n_params(a) == 16 * 32 + 64 + 32 * 64 + 128


def test_imagenet_defaults_to_option_b_and_accepts_a():
    assert count(reslab.create_model("resnet18"), ProjectionShortcut) == 3
    assert count(reslab.create_model("resnet18", shortcut="A"), ProjectionShortcut) == 0


def test_plain_twin_has_same_layers_and_no_shortcuts():
    res, plain = reslab.create_model("resnet20"), reslab.create_model("plain20")
    assert list(res.state_dict()) == list(plain.state_dict())
    assert all(b.shortcut is None for b in plain.blocks())
    plain.load_state_dict(res.state_dict())
    # With each branch's last BN zeroed, a residual block is the identity on its (non-negative) input
    # and a plain block outputs zero: the difference the shortcut makes.
    for model in (res, plain):
        for block in model.blocks():
            nn.init.zeros_(block.last_bn.weight)
            nn.init.zeros_(block.last_bn.bias)
    x = torch.relu(torch.randn(2, 16, 8, 8))
    res.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(res.stages[0].blocks[0](x), x)
        assert torch.equal(plain.stages[0].blocks[0](x), torch.zeros_like(x))


def test_bottleneck_stride_position():
    v1 = reslab.create_model("resnet50")
    v15 = reslab.create_model("resnet50", bottleneck_stride="3x3")
    b1, b15 = v1.stages[1].blocks[0], v15.stages[1].blocks[0]
    assert isinstance(b1, Bottleneck)
    assert b1.conv1.stride == (2, 2) and b1.conv2.stride == (1, 1)
    assert b15.conv1.stride == (1, 1) and b15.conv2.stride == (2, 2)


def test_overrides_num_classes_and_grayscale():
    model = reslab.create_model("resnet20", num_classes=100, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 100)
    assert model.stem.conv.in_channels == 1


def test_zero_init_residual_makes_blocks_identity_plus_shortcut():
    model = reslab.create_model("resnet20", zero_init_residual=True).eval()
    assert all(torch.count_nonzero(b.last_bn.weight) == 0 for b in model.blocks())
    block = model.stages[1].blocks[0]
    x = torch.relu(torch.randn(2, 16, 8, 8))
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(block.shortcut(x)))
    default = reslab.create_model("resnet20")
    assert all(torch.all(b.last_bn.weight == 1) for b in default.blocks())


def test_he_initialisation_scale():
    model = reslab.create_model("resnet56")
    conv = model.stages[2].blocks[3].conv2  # 64 -> 64, 3x3: fan_out = 576
    assert abs(conv.weight.std().item() - math.sqrt(2 / 576)) / math.sqrt(2 / 576) < 0.05


def test_any_6n_plus_2_depth_and_bad_depths():
    model = reslab.create_model("resnet", depth=74)
    assert len(model.blocks()) == 36
    assert reslab.resolve_spec("plain", depth=74).residual is False
    for bad in (21, 4, "x"):
        with pytest.raises(SpecError, match="6n\\+2"):
            reslab.create_model("resnet", depth=bad)
    with pytest.raises(SpecError, match="needs a depth"):
        reslab.create_model("resnet")


def test_unknown_model_and_option_give_spec_errors():
    with pytest.raises(SpecError, match="unknown model"):
        reslab.create_model("resnet21")
    with pytest.raises(SpecError, match="unknown option"):
        reslab.create_model("resnet20", dropout=0.5)
    with pytest.raises(SpecError, match="shortcut"):
        reslab.create_model("resnet20", shortcut="D")
    with pytest.raises(SpecError, match="no bundled weights"):
        reslab.create_model("resnet152", pretrained=True)


def test_registry_covers_every_family_member_and_each_runs():
    names = set(reslab.list_models())
    for depth in (20, 32, 44, 56, 110, 1202, 18, 34, 50, 101, 152):
        assert {f"resnet{depth}", f"plain{depth}"} <= names
    from reslab.summary import preset_summary

    for name in names:
        s = preset_summary(name)  # forward on meta: every preset builds and its shapes chain (once a session)
        assert s.rows[-1].output_shape == ((10,) if s.input_shape[-1] == 32 else (1000,))


def test_spec_round_trip_through_json():
    import json

    spec = reslab.resolve_spec("resnet50", shortcut="C", num_classes=7)
    again = reslab.NetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_forward_backward_cifar():
    model = reslab.create_model("resnet20")
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
