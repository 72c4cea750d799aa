"""Loading sampler checkpoints: every misfit is one line naming the file and the cause."""

from __future__ import annotations

import pytest
import torch

from boed.runtime.checkpoints import CheckpointError
from generative.checkpoint import load_model
from generative.errors import SamplerError

from .checkpoints import edit_json, rewrite_weights, write_tiny


def _error(path) -> str:
    with pytest.raises(SamplerError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path / "tiny")


def test_a_good_checkpoint_loads_and_reproduces_its_weights(tiny):
    model, meta = load_model(tiny)
    again = write_tiny(tiny.parent / "again")
    expected, _ = load_model(again)
    assert meta["sampler"] == "aipo" and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected.state_dict()[k])


@pytest.mark.parametrize(
    ("field", "value"),
    [("width", "eight"), ("width", 8.5), ("grad_checkpoint", "yes"), ("enc_blocks", 3)],
)
def test_config_of_the_wrong_type_names_file_and_field(tiny, field, value):
    edit_json(tiny, lambda meta: meta["config"].update({field: value}))
    message = _error(tiny)
    assert "tiny.json" in message and field in message


def test_unknown_config_key_names_it(tiny):
    edit_json(tiny, lambda meta: meta["config"].update(widht=8))
    message = _error(tiny)
    assert "tiny.json" in message and "widht" in message


def test_config_that_does_not_build_a_model(tiny):
    edit_json(tiny, lambda meta: meta["config"].update(enc_blocks="32q1"))
    message = _error(tiny)
    assert "tiny.json" in message and "32q1" in message


def test_other_width_is_one_line_with_the_first_tensor_shapes_and_count(tiny):
    edit_json(tiny, lambda meta: meta["config"].update(width=16))
    message = _error(tiny)
    assert "tiny.safetensors" in message
    # e.g. "... 140 of 160 tensors have other shapes (first: vae.encoder.in_conv.weight is (8, 1, 3, 3) in
    # the file, (16, 1, 3, 3) for the config)"
    assert "tensors have other shapes" in message
    assert "(8, 1, 3, 3) in the file, (16, 1, 3, 3) for the config" in message


def test_fewer_latent_groups_counts_missing_and_unexpected(tiny):
    edit_json(tiny, lambda meta: meta["config"].update(dec_blocks="1x1,4m1,8m4,16m8,32m16"))
    message = _error(tiny)
    assert "unexpected" in message and "tiny.safetensors" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_name_the_first_bad_tensor(tiny, bad):
    name = "partial_encoder.in_conv.weight"

    def poison(tensors):
        tensors[name].view(-1)[3] = bad

    rewrite_weights(tiny, poison)
    message = _error(tiny)
    assert "non-finite" in message and f"{name} (1 of" in message and "tiny.safetensors" in message


def test_changed_weights_without_a_new_digest_are_refused(tiny):
    from boed.runtime.checkpoints import checkpoint_paths

    weights = checkpoint_paths(tiny)[0]
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(tiny)


def test_not_an_aipo_checkpoint(tiny):
    edit_json(tiny, lambda meta: meta.update(model="pixelcnn"))
    assert "not a checkpoint of the AIPO" in _error(tiny)
