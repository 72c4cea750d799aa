"""Presets, strict overrides, and typed rebuilding of configs from JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from boed.config import PRESETS, ConfigError, Preset, from_dict, get_preset, override, to_dict


def test_presets_match_the_design_table():
    assert (PRESETS["cpu"].image_size, PRESETS["cpu"].patch_size, PRESETS["cpu"].grid) == (64, 16, 17)
    assert (PRESETS["paper"].image_size, PRESETS["paper"].patch_size, PRESETS["paper"].n_samples) == (
        256,
        64,
        10,
    )


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: cpu, paper, tiny"):
        get_preset("gpu")


def test_override_and_unknown_keys():
    p = override(PRESETS["cpu"], grid=9, n_samples=None)
    assert p.grid == 9 and p.n_samples == 10
    with pytest.raises(ConfigError, match="unknown option"):
        override(PRESETS["cpu"], gird=9)


def test_dict_round_trip():
    p = PRESETS["paper"]
    assert from_dict(Preset, to_dict(p)) == p
    with pytest.raises(ConfigError) as info:
        from_dict(Preset, {**to_dict(p), "extra": 1})
    assert info.value.field == "extra"


@dataclass(frozen=True)
class Typed:
    """Every annotation form the checkpoint configs use."""

    size: int
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    blocks: tuple[int, ...] = (1, 2)
    labels: tuple[str, ...] = ("a",)
    pair: tuple[int, float] = (1, 0.5)
    limit: float | None = None
    note: str | None = None


def test_json_round_trip_restores_tuples_and_types():
    t = Typed(size=3, rate=0.25, flag=True, blocks=(4, 5), labels=("p", "q"), pair=(2, 1.5), limit=2.0)
    back = from_dict(Typed, json.loads(json.dumps(to_dict(t))))
    assert back == t and isinstance(back.blocks, tuple) and isinstance(back.labels, tuple)


def test_int_is_accepted_for_float_and_converted():
    t = from_dict(Typed, {"size": 1, "rate": 2, "limit": 3, "pair": [1, 2]})
    assert t.rate == 2.0 and isinstance(t.rate, float) and isinstance(t.limit, float)
    assert isinstance(t.pair[1], float)


BAD = [
    # field, value, expected-type text
    ("size", "twelve", "expected int, got 'twelve'"),
    ("size", 1.5, "expected int, got 1.5"),
    ("size", True, "expected int, got True"),  # a bool is not an int here
    ("size", None, "expected int, got None"),
    ("rate", "0.5", "expected float, got '0.5'"),
    ("rate", False, "expected float, got False"),
    ("flag", 1, "expected bool, got 1"),
    ("name", 3, "expected str, got 3"),
    ("blocks", [2, "four"], r"expected a list of int, got \[2, 'four'\]"),
    ("blocks", 3, "expected a list of int, got 3"),
    ("blocks", "24", "expected a list of int, got '24'"),
    ("labels", ["a", 1], "expected a list of str"),
    ("pair", [1, 2, 3], r"expected a list of 2 \(int, float\)"),
    ("limit", "big", "expected float or null, got 'big'"),
    ("note", 5, "expected str or null, got 5"),
]


@pytest.mark.parametrize("field,value,message", BAD)
def test_wrong_types_name_the_field_the_type_and_the_value(field, value, message):
    data = {"size": 1, field: value}
    with pytest.raises(ConfigError, match=f"config field {field}: {message}") as info:
        from_dict(Typed, data)
    assert info.value.field == field


def test_missing_fields_and_non_dicts():
    with pytest.raises(ConfigError, match="lacks field") as info:
        from_dict(Typed, {"rate": 1.0})
    assert info.value.field == "size"
    with pytest.raises(ConfigError, match="expected a JSON object"):
        from_dict(Typed, [1, 2])


def test_long_values_are_shortened_in_the_message():
    with pytest.raises(ConfigError) as info:
        from_dict(Typed, {"size": "x" * 500})
    assert len(str(info.value)) < 120


def test_the_real_configs_round_trip():
    from classifiers.config import CLASSIFIER_PRESETS, TRAIN_PRESETS
    from generative.config import PRESETS as SAMPLER_PRESETS

    for table in (CLASSIFIER_PRESETS, TRAIN_PRESETS, SAMPLER_PRESETS):
        for config in table.values():
            assert from_dict(type(config), json.loads(json.dumps(to_dict(config)))) == config
