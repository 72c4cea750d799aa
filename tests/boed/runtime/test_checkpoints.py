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


# -- atomic pairs: a save killed between the two renames leaves the previous pair loadable -------------
KILL_SCRIPT = """
import os, sys, torch
from boed.runtime import checkpoints
real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith({suffix!r}):
        os._exit(17)  # killed right after this rename
checkpoints.os.replace = replace
checkpoints.save_checkpoint({path!r}, {{"w": torch.full((3,), 2.0)}}, {{"kind": "k", "version": 2}})
"""


def _kill_during_save(tmp_path, suffix):
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "model"
    script = KILL_SCRIPT.format(path=str(path), suffix=suffix)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[3], capture_output=True, text=True
    )
    assert proc.returncode == 17, proc.stderr
    return path


class _Killed(BaseException):
    pass


def _interrupt_save(monkeypatch, path, suffix, version):
    """In-process stand-in for a kill: raise right after the rename onto ``*suffix``."""
    import os

    from boed.runtime import checkpoints

    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith(suffix):
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(checkpoints.os, "replace", replace)
        with pytest.raises(_Killed):
            save_checkpoint(path, {"w": torch.full((3,), float(version))}, {"kind": "k", "version": version})


def test_kill_between_the_two_renames_keeps_the_previous_pair(tmp_path, caplog):
    path = tmp_path / "model"
    save_checkpoint(path, {"w": torch.full((3,), 1.0)}, {"kind": "k", "version": 1})
    _kill_during_save(tmp_path, ".safetensors")
    # the new weights are in place but the JSON still describes the old ones
    assert read_meta(path)["version"] == 1
    ckpt = load_checkpoint(path, kind="k")
    assert torch.equal(ckpt.tensors["w"], torch.full((3,), 1.0)) and ckpt.meta["version"] == 1
    assert "interrupted" in caplog.text
    # the next save completes and cleans up; the new pair loads
    save_checkpoint(path, {"w": torch.full((3,), 3.0)}, {"kind": "k", "version": 3})
    assert torch.equal(load_checkpoint(path).tensors["w"], torch.full((3,), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_a_save_after_a_crash_keeps_the_good_previous_pair(tmp_path, monkeypatch):
    path = tmp_path / "model"
    save_checkpoint(path, {"w": torch.full((3,), 1.0)}, {"kind": "k", "version": 1})
    _interrupt_save(monkeypatch, path, ".safetensors", 2)
    _interrupt_save(monkeypatch, path, ".safetensors", 3)  # again: the main pair is still mixed
    assert load_checkpoint(path).meta["version"] == 1


def test_kill_after_both_renames_leaves_the_new_pair(tmp_path, monkeypatch):
    path = tmp_path / "model"
    save_checkpoint(path, {"w": torch.full((3,), 1.0)}, {"kind": "k", "version": 1})
    _interrupt_save(monkeypatch, path, ".json", 2)
    assert load_checkpoint(path).meta["version"] == 2


def test_first_save_killed_leaves_no_sidecar(tmp_path, monkeypatch):
    _interrupt_save(monkeypatch, tmp_path / "model", ".safetensors", 1)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "model")


def test_tampering_is_still_an_error_without_a_previous_pair(saved, tmp_path):
    path, _ = saved
    save_checkpoint(tmp_path / "model", {"w": torch.zeros(2)}, {"kind": "classifier"})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


def test_the_shipped_checkpoints_still_load():
    from pathlib import Path

    root = Path(__file__).parents[3]
    for stem in ["classifiers/weights/phantom-cpu", "generative/weights/aipo-phantom-cpu"]:
        assert load_checkpoint(root / stem).meta["sha256"]
