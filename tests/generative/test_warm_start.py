"""``--init`` of the sampler trainer: a run that starts from another checkpoint's weights, and says so."""

from __future__ import annotations

import pytest
import torch

from boed.runtime.checkpoints import load_checkpoint, read_meta
from generative.config import get_config
from generative.errors import SamplerError
from generative.training import TrainOptions, train_sampler

from .conftest import fake_masks


def _train(images, out, steps=2, lr=1e-3, **kw):
    config = get_config("tiny", steps=steps, batch_size=4, lr=lr, **kw.pop("config", {}))
    options = TrainOptions(out=out, val_every=2, ckpt_every=2, val_images=8, workers=0, **kw)
    return train_sampler(config, images, images[:8], options, mask_fn=fake_masks, log=lambda m: None)


def test_init_starts_from_the_weights_and_is_recorded(tiny_images, tmp_path):
    _train(tiny_images, tmp_path / "source")
    source = load_checkpoint(tmp_path / "source", kind="sampler")
    _train(tiny_images, tmp_path / "warm", steps=0, init=tmp_path / "source")
    warm = load_checkpoint(tmp_path / "warm", kind="sampler")
    assert set(warm.tensors) == set(source.tensors)
    assert all(torch.equal(warm.tensors[k], source.tensors[k]) for k in source.tensors)
    init = read_meta(tmp_path / "warm")["training"]["init"]
    assert init == {
        "path": str(tmp_path / "source"),
        "sha256": source.meta["sha256"],
        "trained_on": source.meta["trained_on"],
    }
    # the resume state carries the record: a resumed run still says where it started
    _train(tiny_images, tmp_path / "warm", steps=2, resume=True)
    assert read_meta(tmp_path / "warm")["training"]["init"]["sha256"] == source.meta["sha256"]
    # without init: another start, no record
    _train(tiny_images, tmp_path / "cold", steps=0)
    cold = load_checkpoint(tmp_path / "cold", kind="sampler")
    assert "init" not in read_meta(tmp_path / "cold")["training"]
    assert not all(torch.equal(cold.tensors[k], source.tensors[k]) for k in source.tensors)


def test_init_that_does_not_fit_is_one_error_line(tiny_images, tmp_path):
    _train(tiny_images, tmp_path / "source")
    with pytest.raises(SamplerError, match="--init .*weights do not fit|does not fit|other shapes"):
        _train(tiny_images, tmp_path / "x", init=tmp_path / "source", config={"width": 12})
    with pytest.raises(SamplerError, match="--init .*missing"):
        _train(tiny_images, tmp_path / "y", init=tmp_path / "missing")
