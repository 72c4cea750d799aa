"""Checkpoints: round trip, sha256 verification, clear errors; loading never unpickles."""

import json

import pytest
import torch

from boed.runtime.checkpoints import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)


@pytest.fixture
def saved(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    path = save_checkpoint(tmp_path / "model", tensors, {"kind": "classifier", "config": {"width": 4}})
    return path, tensors


def test_round_trip(saved):
    path, tensors = saved
    ckpt = load_checkpoint(path, kind="classifier")
    assert ckpt.config == {"width": 4}
    for name, value in tensors.items():
        assert torch.equal(ckpt.tensors[name], value)
    assert len(ckpt.sha256) == 64


@pytest.mark.parametrize("name", ["model", "model.safetensors", "model.json"])
def test_any_name_of_the_pair_works(saved, tmp_path, name):
    assert load_checkpoint(tmp_path / name).meta["kind"] == "classifier"


def test_paths_pair():
    weights, sidecar = checkpoint_paths("a/b/net.json")
    assert (weights.name, sidecar.name) == ("net.safetensors", "net.json")


def test_tampered_weights_fail_sha256(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_truncated_weights_fail(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_wrong_kind(saved):
    with pytest.raises(CheckpointError, match="expected 'sampler'"):
        load_checkpoint(saved[0], kind="sampler")


def test_missing_and_garbage_sidecar(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_meta(tmp_path / "nothing")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_meta(tmp_path / "junk")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a boed-checkpoint"):
        read_meta(tmp_path / "other")


def test_missing_weights(saved):
    path, _ = saved
    path.unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_checkpoint(path)


def test_saved_files_are_not_private(saved, tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "model.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
