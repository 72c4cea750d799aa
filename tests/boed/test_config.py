"""Presets and strict overrides."""

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
    with pytest.raises(ConfigError):
        from_dict(Preset, {**to_dict(p), "extra": 1})
