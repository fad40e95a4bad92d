"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks"): shape,
counts, the clean identity path, and everything that walks a model (folding, responses, deepen,
checkpoints, export, foreign weights, specs and the CLI)."""

import json

import pytest
import torch
from torch import nn

import reslab
from reslab.analysis.deepen import deepen, max_output_difference
from reslab.analysis.responses import layer_responses, response_layers
from reslab.errors import CheckpointError, SpecError
from reslab.inference import fold_batchnorm, optimize_for_inference
from reslab.models.blocks import PreactBasicBlock, PreactBottleneck
from reslab.models.shortcuts import ProjectionShortcut, ZeroPadShortcut

from conftest import cli, trained_like


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_bottleneck(**kw):
    """Depth 11: one pre-activation bottleneck per stage, 16 -> 64 -> 128 -> 256 channels."""
    return trained_like("preact", depth=11, block="bottleneck", **kw)


# ---- counts and shapes ---------------------------------------------------------------------------

def test_cifar_param_counts_equal_the_2016_paper():
    # The paper's 1.7M and 10.2M, exactly as its released code builds them: bottleneck widths 16/64,
    # 32/128, 64/256, a bare 1x1 conv projecting wherever the width changes (16 -> 64 included).
    assert n_params(reslab.create_model("preact164")) == 1_703_258
    assert reslab.summarize("preact1001").params == 10_327_706  # on the meta device: no memory
    # Basic blocks: the BNs move (stem -> head, output -> input width) but their total stays.
    assert reslab.summarize("preact110").params == reslab.summarize("resnet110").params == 1_727_962


def test_depths_count_weighted_layers():
    for name, depth, blocks in (("preact110", 110, 54), ("preact164", 164, 54), ("preact1001", 1001, 333),
                                ("preact18", 18, 8), ("preact200", 200, 66)):
        spec = reslab.resolve_spec(name)
        assert spec.preact and spec.depth == depth and len(spec.blocks) == blocks
    assert [len(s.blocks) for s in reslab.resolve_spec("preact200").stages] == [3, 24, 36, 3]


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_preact_has_the_original_convolutions_and_classifier(depth):
    with torch.device("meta"):
        original, preact = reslab.create_model(f"resnet{depth}"), reslab.create_model(f"preact{depth}")
    def shapes(model, kind):
        return sorted(tuple(m.weight.shape) for m in model.modules() if isinstance(m, kind))

    # Same weighted layers (the projections lose only their BN); only the BNs move.
    assert shapes(preact, nn.Conv2d) == shapes(original, nn.Conv2d)
    assert shapes(preact, nn.Linear) == shapes(original, nn.Linear)
    assert [r.output_shape for r in reslab.summarize(f"preact{depth}").rows] == \
        [r.output_shape for r in reslab.summarize(f"resnet{depth}").rows]


def test_cifar_bottleneck_stage_shapes():
    shapes = {r.name: r.output_shape for r in reslab.summarize("preact164").rows}
    assert shapes == {"stem": (16, 32, 32), "stage1": (64, 32, 32), "stage2": (128, 16, 16),
                      "stage3": (256, 8, 8), "head": (10,)}


def test_forward_backward_and_where_the_bns_are():
    model = reslab.create_model("preact", depth=11, block="bottleneck", num_classes=7).train()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # A bare conv stem (the first block opens with BN-ReLU) and a BN-ReLU head before the pool.
    assert model.stem.bn is None and isinstance(model.head.bn, nn.BatchNorm2d)
    assert all(isinstance(b, PreactBottleneck) for b in model.blocks())
    assert isinstance(reslab.create_model("preact18").stages[0].blocks[0], PreactBasicBlock)


def test_preact164_uses_projections_without_bn_where_width_changes():
    model = reslab.create_model("preact164")
    projections = [m for m in model.modules() if isinstance(m, ProjectionShortcut)]
    assert len(projections) == 3 and all(p.bn is None for p in projections)
    assert model.stages[0].blocks[0].shortcut is projections[0]  # 16 -> 64 already projects
    assert model.spec.shortcut == "B"
    a = reslab.create_model("preact", depth=164, shortcut="A")
    assert sum(isinstance(m, ZeroPadShortcut) for m in a.modules()) == 3
    assert n_params(a) == 1_703_258 - (16 * 64 + 64 * 128 + 128 * 256)


# ---- the block itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("train_mode", [False, True])
def test_identity_path_is_clean_nothing_after_the_addition(train_mode):
    """With its last conv zeroed a pre-activation block returns its input itself, negative values
    included; the 2015 block returns ReLU of it."""
    x = torch.randn(4, 16, 8, 8)
    preact = reslab.create_model("preact", depth=20, zero_init_residual=True).train(train_mode)
    original = reslab.create_model("resnet20", zero_init_residual=True).train(train_mode)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(preact.stages[0].blocks[1](x), x)
        assert torch.equal(original.stages[0].blocks[1](x), torch.relu(x))
        # The whole stack: the head's input is the stem's output, moved only by the option-A shortcuts.
        stem = preact.stem(images)
        expected = preact.stages[2].blocks[0].shortcut(preact.stages[1].blocks[0].shortcut(stem))
        assert torch.equal(preact.forward_features(images), expected)
    assert (stem < 0).any()


def test_zero_init_residual_zeroes_the_last_conv_and_still_learns():
    model = reslab.create_model("preact", depth=11, block="bottleneck", zero_init_residual=True)
    blocks = model.blocks()
    assert all(torch.count_nonzero(b.conv3.weight) == 0 for b in blocks)
    assert all(torch.all(b.bn3.weight == 1) for b in blocks)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    # Zeroing a BN before a ReLU would leave every gradient in the branch at zero; a zero conv does not.
    assert all(b.conv3.weight.grad.abs().sum() > 0 for b in blocks)


def test_projection_reads_the_preactivated_input_identity_reads_x():
    model = tiny_bottleneck()
    block = model.stages[1].blocks[0]  # 64 -> 128, stride 2, projection
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        activated = torch.relu(block.bn1(x))
        expected = block.branch(activated) + block.shortcut.conv(activated)
        assert torch.allclose(block(x), expected, atol=1e-6)
    identity_block = trained_like("preact", depth=20).stages[0].blocks[1]
    with torch.no_grad():
        y = torch.randn(2, 16, 8, 8)
        assert torch.allclose(identity_block(y), identity_block.branch(torch.relu(identity_block.bn1(y))) + y)


def test_plain_twin_has_the_same_layers_and_no_shortcut():
    res, plain = reslab.create_model("preact110"), reslab.create_model("preact-plain110")
    assert list(res.state_dict()) == list(plain.state_dict())
    assert all(b.shortcut is None for b in plain.blocks()) and not plain.spec.residual
    plain.load_state_dict(res.state_dict())
    plain.eval(), res.eval()
    x = torch.randn(2, 16, 8, 8)
    block, twin = res.stages[0].blocks[0], plain.stages[0].blocks[0]
    with torch.no_grad():
        assert torch.allclose(block(x), twin(x) + x)  # exactly the shortcut's x apart
    # Bottleneck twins drop the projections (and their weights) too.
    assert n_params(reslab.create_model("preact-plain164")) == 1_703_258 - (16 * 64 + 64 * 128 + 128 * 256)


# ---- names, presets, families, specs ------------------------------------------------------------

def test_registry_names_families_and_overrides():
    names = set(reslab.list_models())
    for depth in (110, 164, 1001, 18, 34, 50, 101, 152, 200):
        assert {f"preact{depth}", f"preact-plain{depth}"} <= names
        assert reslab.model_info(f"preact{depth}").preact
    assert not reslab.model_info("resnet20").preact
    # A family call gives the preset: the 2016 paper's block for that depth.
    assert reslab.resolve_spec("preact", depth=164) == reslab.resolve_spec("preact164")
    assert reslab.resolve_spec("preact_imagenet", depth=50) == reslab.resolve_spec("preact50")
    assert reslab.resolve_spec("preact_plain", depth=110) == reslab.resolve_spec("preact-plain110")
    assert reslab.resolve_spec("preact", depth=164, block="basic").name == "preact164-basic"
    # preact is an override like any other, and names follow what was built.
    assert reslab.resolve_spec("resnet56", preact=True).name == "preact56"
    original = reslab.resolve_spec("preact164", preact=False)
    assert not original.preact and original.depth == 164 and original.name == "resnet164-bottleneck"
    with pytest.raises(SpecError, match=r"9n\+2"):
        reslab.resolve_spec("preact", depth=32, block="bottleneck")
    with pytest.raises(SpecError, match="block must be"):
        reslab.resolve_spec("preact", depth=20, block="wide")
    with pytest.raises(SpecError, match="preact must be true or false"):
        reslab.resolve_spec("resnet20", preact="yes")


def test_spec_round_trip_and_old_dicts_without_the_field():
    spec = reslab.resolve_spec("preact164", num_classes=100)
    again = reslab.NetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.preact
    old = reslab.resolve_spec("resnet20").to_dict()
    del old["preact"]  # as written before the field existed
    assert reslab.NetSpec.from_dict(old) == reslab.resolve_spec("resnet20")


def test_builder_preact_reproduces_the_preset():
    b = reslab.Builder(shortcut="A", preact=True)
    b.init_block(filter=3, channels=16)
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        b.residual_block(channels=width, stride=stride, repeat=3)
    b.fc()
    built, preset = b.spec(), reslab.resolve_spec("preact", depth=20)
    assert built.preact and built.stages == preset.stages and built.stem == preset.stem
    assert reslab.summarize(built).params == reslab.summarize(preset).params
    assert b.build().stem.bn is None


def test_yaml_specs_with_preact(tmp_path):
    layered = tmp_path / "tiny_preact.yaml"
    layered.write_text("num_classes: 4\nshortcut: B\npreact: true\nlayers:\n"
                       "  - init_block: {channels: 8}\n"
                       "  - residual_block: {channels: 32, kind: bottleneck}\n"
                       "  - residual_block: {channels: 32, stride: 2}\n"
                       "  - fc: {}\n")
    model = reslab.create_model(layered)
    assert model.spec.preact and model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert isinstance(model.stages[0].blocks[0], PreactBottleneck)
    assert isinstance(model.stages[1].blocks[0], PreactBasicBlock)
    preset = tmp_path / "p56.yaml"
    preset.write_text("model: resnet56\npreact: true\n")
    spec = reslab.resolve_spec(preset)
    assert spec.preact and spec.name == "preact56" and spec.depth == 56
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: preact164\npreact: maybe\n")
    with pytest.raises(SpecError, match="bad.yaml: .*preact must be true or false"):
        reslab.resolve_spec(bad)


# ---- everything that walks a model ---------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"depth": 20}, {"depth": 20, "shortcut": "C"}, {"depth": 11, "block": "bottleneck"}])
def test_folded_inference_equals_the_eval_model(kw):
    model = trained_like("preact", **kw)
    fast = optimize_for_inference(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        ref, out = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Only conv->BN pairs merge: each block's opening BN (it reads the sum) and the head's BN remain.
    kept = sorted(name for name, m in fold_batchnorm(model).named_modules() if isinstance(m, nn.BatchNorm2d))
    expected = sorted([f"stages.{s}.blocks.{i}.bn1" for s, stage in enumerate(model.stages)
                       for i in range(len(stage.blocks))] + ["head.bn"])
    assert kept == expected


def test_folding_the_2015_pairs_would_be_wrong_here():
    """The pairing the 2015 blocks use (conv1 with bn1) would merge a BN into the conv *after* it: the
    equality above is a test that can fail."""
    import copy

    from reslab.inference import fold_conv_bn

    model = trained_like("preact", depth=20)
    wrong = copy.deepcopy(model)
    for block in wrong.blocks():
        if block.bn1.num_features == block.conv1.out_channels:  # where the shapes even allow it
            block.conv1, block.bn1 = fold_conv_bn(block.conv1, block.bn1), nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert (wrong(x) - model(x)).abs().max() > 1e-3


def test_responses_of_a_preact_net_are_defined_and_measured():
    model = trained_like("preact", depth=8)
    names = [n for n, _ in response_layers(model)]
    # After the BN that follows a 3x3 conv where there is one; the last conv's own output (F(x), added
    # to the shortcut as it is) where there is none; the bare stem conv's own output.
    assert names == ["stem.conv", "stages.0.blocks.0.bn2", "stages.0.blocks.0.conv2", "stages.1.blocks.0.bn2",
                     "stages.1.blocks.0.conv2", "stages.2.blocks.0.bn2", "stages.2.blocks.0.conv2"]
    batches = [(torch.randn(5, 3, 16, 16), None) for _ in range(3)]
    measured = layer_responses(model, batches)
    block = model.stages[0].blocks[0]
    with torch.no_grad():
        residual = torch.cat([block.branch(torch.relu(block.bn1(model.stem(x)))).flatten() for x, _ in batches])
    assert measured[2].std == pytest.approx(residual.double().std(unbiased=False).item(), rel=1e-6)
    assert [n for n, _ in response_layers(tiny_bottleneck())][1:] == [f"stages.{s}.blocks.0.bn3" for s in range(3)]


@pytest.mark.parametrize("kw, stages", [({"depth": 20}, None), ({"depth": 11, "block": "bottleneck"}, [0, 1])])
def test_deepened_preact_is_exact_in_eval_and_train_mode(kw, stages):
    model = trained_like("preact", **kw)
    result = deepen(model, add=3, stages=stages)
    layers_per_block = 3 if kw.get("block") == "bottleneck" else 2  # more of the net's own blocks
    deeper = model.spec.depth + 3 * layers_per_block
    assert result.spec.preact and result.spec.depth == deeper
    assert result.spec.name == f"preact{deeper}-from-{model.spec.name}"
    batches = [(torch.randn(8, 3, 16, 16), None) for _ in range(2)]
    assert max_output_difference(model, result.model, batches, train_mode=False) == 0
    assert max_output_difference(model, result.model, batches, train_mode=True) == 0


def test_deepen_refuses_plain_preact_and_option_c():
    with pytest.raises(SpecError, match="plain pre-activation"):
        deepen(trained_like("preact-plain110"), add=1)
    with pytest.raises(SpecError, match="option C"):
        deepen(trained_like("preact", depth=20, shortcut="C"), add=1)


def _checkpoint(model):
    from reslab.checkpoint import Checkpoint
    from reslab.data.augment import Normalizer

    return Checkpoint(spec=model.spec, classes=[str(i) for i in range(10)],
                      normalizer=Normalizer(torch.zeros(3), torch.ones(3)), input_size=16,
                      model_state=model.state_dict())


def test_checkpoint_round_trip_and_torchscript_export(tmp_path):
    from reslab.checkpoint import load_checkpoint, save_checkpoint
    from reslab.export import export

    model = tiny_bottleneck()
    save_checkpoint(_checkpoint(model), tmp_path / "p.pt")
    loaded = load_checkpoint(tmp_path / "p.pt")
    assert loaded.spec == model.spec
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded.build_model()(x), model(x))
    result = export(loaded, tmp_path / "p.ts", "torchscript", x)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5


def test_foreign_layouts_refuse_preact_models():
    from reslab.models.convert import load_foreign_weights

    torchvision_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}
    with pytest.raises(CheckpointError, match="preact18 is a pre-activation network"):
        load_foreign_weights(reslab.create_model("preact18"), torchvision_like)


def test_cli_summary_and_models_show_preact(monkeypatch):
    from reslab.models import registry

    result = cli("summary", "preact164")
    assert result.returncode == 0 and "1,703,258" in result.stdout and "256x8x8" in result.stdout
    # `reslab models` on two of its rows (all of them take a minute: ResNet-1202, -1001, -200 ...).
    monkeypatch.setattr(registry, "MODELS", {n: registry.MODELS[n] for n in ("resnet110", "preact164")})
    records = {r["name"]: r for r in json.loads(cli("models", "--json").stdout)}
    assert records["preact164"]["preact"] and records["preact164"]["params"] == 1_703_258
    assert not records["resnet110"]["preact"]
    assert "preact164" in cli("models").stdout
