"""The "make your own ResNet" builder and YAML/JSON specs."""

import json
import time

import pytest
import torch

import reslab
from reslab.errors import SpecError
from reslab.models.shortcuts import ProjectionShortcut


def old_library_readme_network() -> reslab.Builder:
    """The old library's README example: 7x7 stem, five stages of 6/8/7/5/6 blocks at 32..512."""
    b = reslab.Builder(in_channels=3, num_classes=10)
    b.init_block(filter=(7, 7), channels=32, max_pool=False)
    for blocks, width in zip((6, 8, 7, 5, 6), (32, 64, 128, 256, 512)):
        b.max_pool(kernel=2, stride=2)
        b.residual_block(filter=(3, 3), channels=width, repeat=blocks)
    b.avg_pool()
    b.fc()
    return b


def test_old_readme_example_builds_and_warns_about_1x1_maps():
    with pytest.warns(UserWarning, match="1x1 maps"):
        b = old_library_readme_network()
    model = b.build()
    spec = b.spec()
    assert [len(s.blocks) for s in spec.stages] == [6, 8, 7, 5, 6]
    assert [s.blocks[0].out_channels for s in spec.stages] == [32, 64, 128, 256, 512]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    shapes = [r.output_shape for r in reslab.summarize(spec).rows]
    assert shapes[1:6] == [(32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]
    # Default shortcut B: a projection exactly where the width changes (stages 2..5).
    assert sum(isinstance(m, ProjectionShortcut) for m in model.modules()) == 4


def test_old_channel_pair_form_is_checked():
    b = reslab.Builder()
    b.init_block(filter=[7, 7], channel=[3, 32])
    b.residual_block(filter=[3, 3], channel=[32, 32])
    b.residual_block(filter=[3, 3], channel=[32, 64])
    with pytest.raises(SpecError, match=r"channel=\[32, 128\] but the input here has 64 channels"):
        b.residual_block(filter=[3, 3], channel=[32, 128])
    with pytest.raises(SpecError, match="input here has 3 channels"):
        reslab.Builder(in_channels=3).init_block(channel=[1, 16])


def test_builder_reproduces_the_resnet20_preset():
    b = reslab.Builder(in_channels=3, num_classes=10, shortcut="A")
    b.init_block(filter=3, channels=16)
    b.residual_block(channels=16, repeat=3)
    b.residual_block(channels=32, stride=2, repeat=3)
    b.residual_block(channels=64, stride=2, repeat=3)
    b.fc()
    built = b.spec()
    preset = reslab.resolve_spec("resnet20")
    assert built.stages == preset.stages and built.stem == preset.stem
    assert reslab.summarize(built).params == 269_722


def test_strided_block_halves_the_map_and_bottlenecks_work():
    b = reslab.Builder(num_classes=5, input_size=64)
    b.init_block(channels=16).residual_block(channels=64, stride=2, kind="bottleneck", repeat=2).fc()
    shapes = [r.output_shape for r in reslab.summarize(b.spec(), input_size=64).rows]
    assert shapes == [(16, 64, 64), (64, 32, 32), (5,)]


@pytest.mark.parametrize("calls, message", [
    (lambda b: b.residual_block(channels=16), "before init_block"),
    (lambda b: b.init_block(channels=16).init_block(channels=16), "only be called once"),
    (lambda b: b.init_block(channels=16).residual_block(), "output width"),
    (lambda b: b.init_block(channels=16).residual_block(channels=16, kind="wide"), "unknown block kind"),
    (lambda b: b.init_block(channels=16).residual_block(channels=16, filter=(2, 2)), "odd"),
    (lambda b: b.init_block(channels=16, filter=4), "odd"),
    (lambda b: b.init_block(channels=16).residual_block(channels=16).build(), "call fc"),
    (lambda b: b.init_block(channels=16).fc().residual_block(channels=16), "after fc"),
    (lambda b: b.init_block(channels=16).max_pool(64), "does not fit"),
    (lambda b: b.init_block(channels=16).max_pool(2).max_pool(2), "two pools"),
    (lambda b: b.init_block(channels=16).residual_block(channels=16, repeat=0), "repeat"),
    (lambda b: b.init_block(channels=16, filter=(3, 3, 3)), "filter"),
])
def test_builder_errors_are_clear(calls, message):
    with pytest.raises(SpecError, match=message):
        calls(reslab.Builder())


def test_option_a_cannot_shrink_channels():
    b = reslab.Builder(shortcut="A").init_block(channels=32).residual_block(channels=16).fc()
    with pytest.raises(SpecError, match="cannot shrink"):
        b.build()


YAML_NET = """
in_channels: 1
num_classes: 4
shortcut: A
layers:
  - init_block: {filter: [3, 3], channels: 8}
  - residual_block: {channels: 8, repeat: 2}
  - max_pool: {kernel: 2}
  - residual_block: {channels: 16}
  - avg_pool: {}
  - fc: {}
"""


def test_yaml_spec_used_wherever_a_model_name_is(tmp_path):
    path = tmp_path / "tiny_net.yaml"
    path.write_text(YAML_NET)
    model = reslab.create_model(str(path))
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 4)
    s = reslab.summarize(path)
    assert s.model == "tiny_net"
    assert [r.output_shape for r in s.rows][1:3] == [(8, 32, 32), (16, 16, 16)]
    # The same network as JSON.
    import yaml

    jpath = tmp_path / "tiny_net.json"
    jpath.write_text(json.dumps(yaml.safe_load(YAML_NET)))
    assert reslab.resolve_spec(jpath).stages == reslab.resolve_spec(path).stages
    # Overrides apply to spec files too.
    assert reslab.create_model(str(path), num_classes=9)(torch.randn(1, 1, 16, 16)).shape == (1, 9)


def test_preset_reference_in_yaml(tmp_path):
    path = tmp_path / "r56b.yaml"
    path.write_text("model: resnet56\nshortcut: B\nnum_classes: 100\n")
    spec = reslab.resolve_spec(path)
    assert spec.shortcut == "B" and spec.num_classes == 100 and spec.depth == 56


@pytest.mark.parametrize("text, message", [
    ("layers: [{init_block: {channels: 8}}, {residual_block: {chanels: 8}}, {fc: {}}]",
     r"layers\[1\]\.residual_block: .*chanels"),
    ("layers: [{init_block: {channels: 8}}, {conv: {}}, {fc: {}}]", r"layers\[1\]: unknown layer 'conv'"),
    ("layers: [{init_block: {channels: 8}}, {residual_block: {channels: 8}}]", "call fc"),
    ("widht: 3\nlayers: []", "unknown key"),
    ("num_classes: 10", "needs 'model: NAME' or a non-empty 'layers:'"),
    ("layers: [oops]", r"layers\[0\]: each layer is one mapping"),
    ("model: resnet21", "unknown model"),
    ("- just\n- a list", "top level must be a mapping"),
    ("layers: [{init_block: {channels: 8}", "not valid YAML"),
])
def test_bad_specs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as info:
        reslab.resolve_spec(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        reslab.resolve_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, blocks", [
    ("layers:\n  - init_block: {channels: 16}\n  - residual_block: {channels: 16, repeat: 100000}\n  - fc: {}\n",
     "100,000"),
    ("layers:\n  - init_block: {channels: 100000}\n  - residual_block: {channels: 100000}\n  - fc: {}\n", "1"),
    ("model: resnet\ndepth: 600002\n", "300,000"),
])
def test_absurd_specs_are_refused_before_anything_is_built(tmp_path, text, blocks):
    path = tmp_path / "huge.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(SpecError, match=f"huge.yaml: too large to build: about {blocks} residual blocks"):
        reslab.create_model(str(path))
    assert time.monotonic() - started < 1.0


def test_resnet1202_spec_is_within_the_size_limits(tmp_path):
    from reslab.models.spec import MAX_BLOCKS, MAX_PARAMS, estimate_size

    layers = [{"init_block": {"channels": 16}}] + [
        {"residual_block": {"channels": w, "stride": 1 if w == 16 else 2, "repeat": 200}} for w in (16, 32, 64)
    ] + [{"fc": {}}]
    blocks, params = estimate_size({"layers": layers})
    assert blocks == 600 and 1.9e7 < params < 2e7  # the estimate is close to the true 19,421,274
    assert blocks < MAX_BLOCKS / 10 and params < MAX_PARAMS / 100
    path = tmp_path / "r1202.yaml"
    path.write_text("model: resnet\ndepth: 1202\n")
    assert reslab.summarize(str(path)).params == 19_421_274


def test_a_family_of_absurd_depth_is_refused_before_anything_is_built():
    started = time.monotonic()
    with pytest.raises(SpecError, match="depth 6000002 is too large to build: 3,000,000 residual blocks"):
        reslab.resolve_spec("resnet", depth=6_000_002)
    assert time.monotonic() - started < 1
    assert reslab.resolve_spec("resnet", depth=1202).depth == 1202
