"""build_sampler refuses a checkpoint of another sampler kind; no shipped AIPO-R checkpoint."""

from __future__ import annotations

import pytest

from generative.errors import SamplerError
from generative.registry import build_sampler, shipped_checkpoint

from .checkpoints import edit_json, write_tiny

KINDS = {"vae": "vae", "vae+aipo": "aipo", "aipo": "aipo", "aipo-r": "aipo-r", "vae+aipo-r": "aipo-r"}


@pytest.mark.parametrize("objective", sorted(KINDS))
@pytest.mark.parametrize("name", ["aipo", "aipo-r", "vae"])
def test_kind_must_fit_the_requested_name(tmp_path, objective, name):
    path = write_tiny(tmp_path / "ck", objective)
    kind = KINDS[objective]
    if name == "vae" or name == kind:
        sampler = build_sampler(name, path)
        assert sampler.name == name
        return
    with pytest.raises(SamplerError) as info:
        build_sampler(name, path)
    message = str(info.value)
    assert "\n" not in message
    assert "ck.json" in message and f"{kind!r}" in message and f"requested as {name!r}" in message


def test_old_checkpoint_without_a_sampler_field_uses_its_objective(tmp_path):
    path = write_tiny(tmp_path / "old", "aipo-r")
    edit_json(path, lambda meta: meta.pop("sampler"))
    assert build_sampler("aipo-r", path).name == "aipo-r"
    with pytest.raises(SamplerError, match="'aipo-r' sampler checkpoint, requested as 'aipo'"):
        build_sampler("aipo", path)


def test_unrecorded_kind_is_refused_except_as_vae(tmp_path):
    path = write_tiny(tmp_path / "anon", "aipo")
    edit_json(path, lambda meta: (meta.pop("sampler"), meta["config"].update(objective="mystery")))
    with pytest.raises(SamplerError, match="does not record which sampler"):
        build_sampler("aipo", path)


def test_no_shipped_aipo_r_checkpoint_says_how_to_train_one():
    for call in (lambda: build_sampler("aipo-r"), lambda: shipped_checkpoint("cpu", "aipo-r")):
        with pytest.raises(SamplerError) as info:
            call()
        message = str(info.value)
        assert "no shipped AIPO-R checkpoint" in message
        assert "boed train-sampler --sampler aipo-r" in message and "\n" not in message


def test_vae_uses_the_shipped_aipo_checkpoint():
    assert shipped_checkpoint("cpu", "vae") == shipped_checkpoint("cpu", "aipo")
