"""Training: a few tiny steps, checkpoints, --resume, the pretrained mode, the all-skipped guard."""

from __future__ import annotations

import pytest
import torch

from boed.runtime.checkpoints import load_checkpoint, read_meta
from boed.runtime.training import TrainingError
from generative.aipo import lr_schedule
from generative.checkpoint import load_model
from generative.config import get_config
from generative.errors import SamplerError
from generative.registry import build_sampler
from generative.training import TrainOptions, train_sampler, train_state_path

from .conftest import fake_masks


def _train(tiny_images, out, steps=4, quiet=True, val=None, **kw):
    config = get_config("tiny", steps=steps, batch_size=4, **kw.pop("config", {}))
    options = TrainOptions(out=out, val_every=2, ckpt_every=2, val_images=8, workers=0, **kw)
    return train_sampler(
        config,
        tiny_images,
        tiny_images[:8] if val is None else val,
        options,
        mask_fn=fake_masks,
        log=(lambda m: None) if quiet else print,
    )


def test_train_writes_a_loadable_sampler_checkpoint(tiny_images, tmp_path):
    _, state, metrics = _train(tiny_images, tmp_path / "ckpt")
    assert state.step == 4 and state.images_seen == 16
    meta = read_meta(tmp_path / "ckpt")
    assert meta["kind"] == "sampler" and meta["sampler"] == "aipo"
    assert meta["config"]["preset"] == "tiny" and meta["config"]["objective"] == "vae+aipo"
    assert "val_elbo_bpd" in meta["metrics"] and meta["training"]["step"] == 4
    resume = read_meta(train_state_path(tmp_path / "ckpt"))
    assert resume["kind"] == "train-state" and resume["trains"] == "sampler"
    assert meta["data"]["train"]["source"] == "tensor" and meta["trained_on"]["image_size"] == 32
    sampler = build_sampler("aipo", tmp_path / "ckpt")
    x = tiny_images[:1]
    m = torch.zeros_like(x)
    assert sampler.sample(x, m, 2).images.shape == (2, 1, 1, 32, 32)


def test_resume_continues_where_it_stopped_bit_exactly(tiny_images, tmp_path):
    out = tmp_path / "ckpt"
    _train(tiny_images, out, steps=2, config={"warmup_steps": 2})
    model, state, _ = _train(tiny_images, out, steps=4, resume=True, config={"warmup_steps": 2})
    assert state.step == 4
    assert read_meta(out)["training"]["step"] == 4
    ckpt = load_checkpoint(train_state_path(out), kind="train-state")
    assert any(k.startswith("optim.main.") for k in ckpt.tensors)
    # the same run without the interruption: identical EMA weights and optimiser state
    straight, _, _ = _train(tiny_images, tmp_path / "straight", steps=4, config={"warmup_steps": 2})
    for (name, a), b in zip(model.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other = load_checkpoint(train_state_path(tmp_path / "straight")).tensors
    for key, value in ckpt.tensors.items():
        assert torch.equal(value, other[key]), key


def test_resume_with_another_config_is_refused(tiny_images, tmp_path):
    _train(tiny_images, tmp_path / "ckpt", steps=2)
    with pytest.raises(SamplerError, match="another config"):
        _train(tiny_images, tmp_path / "ckpt", steps=4, resume=True, config={"lr": 0.5})
    with pytest.raises(SamplerError, match="--resume"):
        _train(tiny_images, tmp_path / "none", steps=4, resume=True)


def test_trains_on_a_dataset_and_records_its_provenance(tmp_path):
    from datasets import open_dataset

    train = open_dataset("phantoms", split="train", size=32, n=16)
    val = open_dataset("phantoms", split="val", size=32, n=8)
    _, state, _ = _train(train, tmp_path / "ph", steps=2, val=val)
    meta = read_meta(tmp_path / "ph")
    assert meta["data"] == {"train": train.describe(), "val": val.describe()}
    described = train.describe()
    assert meta["trained_on"] == {
        "source": "phantoms",
        "fingerprint": described.get("fingerprint"),
        "split_seed": described.get("split_seed"),
        "labels": list(train.labels),
        "image_size": 32,
    }
    assert state.images_seen == 8


def test_pretrained_mode_trains_only_the_partial_encoder(tiny_images, tmp_path):
    _train(tiny_images, tmp_path / "vae", config={"objective": "vae"})
    base, _ = load_model(tmp_path / "vae")
    model, _, _ = _train(
        tiny_images, tmp_path / "aipo-r", pretrained_vae=tmp_path / "vae", config={"objective": "aipo-r"}
    )
    for (name, a), b in zip(base.vae.state_dict().items(), model.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # AIPO-R defaults to initialising the partial encoder from the full encoder (§3.2)
    assert read_meta(tmp_path / "aipo-r")["sampler"] == "aipo-r"


def test_pretrained_mode_rejects_joint_objectives(tiny_images, tmp_path):
    _train(tiny_images, tmp_path / "vae", steps=1, config={"objective": "vae"})
    with pytest.raises(SamplerError, match="frozen"):
        _train(tiny_images, tmp_path / "x", steps=1, pretrained_vae=tmp_path / "vae")


def test_every_update_skipped_raises(tiny_images, tmp_path):
    with pytest.raises(TrainingError, match="skipped"):
        _train(tiny_images, tmp_path / "ckpt", steps=60, config={"skip_threshold": 1e-12})


def test_wrong_image_size_is_a_sampler_error(tmp_path):
    with pytest.raises(SamplerError, match="32"):
        _train(torch.rand(4, 1, 16, 16), tmp_path / "ckpt")


def test_schedule_decays_to_a_tenth():
    f = lr_schedule(get_config("tiny", lr=1.0, warmup_steps=10, steps=110))
    assert f(0) == pytest.approx(0.1)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1)
