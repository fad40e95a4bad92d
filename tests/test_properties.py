"""Property tests: whatever a spec or config file holds, reading it either works or raises reslab's
own error (one line in the CLI), never another exception."""

from __future__ import annotations

import warnings

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reslab.errors import ReslabError
from reslab.models.registry import resolve_spec
from reslab.train.config import FIELDS, TrainConfig, apply

SPEC_KEYS = ["layers", "model", "residual_block", "init_block", "max_pool", "avg_pool", "fc", "repeat", "channels",
             "channel", "filter", "stride", "kind", "kernel", "in_channels", "num_classes", "shortcut", "residual",
             "bottleneck_stride", "zero_init_residual", "input_size", "name", "depth", "widths", "preact", "block"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=6), st.sampled_from(["A", "B", "C", "basic", "bottleneck", "resnet20",
                                                          "resnet", "3x3", "1x1", "plain56", "preact",
                                                          "preact164", "preact-plain18"]))


def _values(keys: list[str]) -> st.SearchStrategy:
    return st.recursive(SCALARS, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(keys), inner, max_size=4)), max_leaves=12)


LAYER = st.dictionaries(st.sampled_from(["init_block", "residual_block", "max_pool", "avg_pool", "fc", "conv"]),
                        st.one_of(st.none(), st.dictionaries(st.sampled_from(SPEC_KEYS), _values(SPEC_KEYS),
                                                             max_size=4)), min_size=1, max_size=2)
SPECS = st.one_of(
    st.dictionaries(st.sampled_from(SPEC_KEYS), _values(SPEC_KEYS), max_size=6),
    st.fixed_dictionaries({"layers": st.lists(LAYER, max_size=6)},
                          optional={k: _values(SPEC_KEYS) for k in ("in_channels", "num_classes", "shortcut")}),
    _values(SPEC_KEYS),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(SPECS)
@example({"layers": [{"init_block": {"channels": 8}}, {"residual_block": {"channels": 8, "repeat": 10 ** 9}},
                     {"fc": None}]})
@example({"model": "resnet", "depth": 10 ** 12})
def test_any_spec_file_loads_or_raises_a_reslab_error(tmp_path, data):
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the builder's 1x1-map warning is not an error
        try:
            resolve_spec(path)
        except ReslabError:
            pass


CONFIG_KEYS = sorted(FIELDS) + ["colour", "depth"]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), _values(CONFIG_KEYS), max_size=6))
def test_any_config_mapping_applies_or_raises_a_reslab_error(values):
    try:
        apply(TrainConfig(), values, "test").validate()
    except ReslabError:
        pass
