"""``--init``: a classifier run that starts from another checkpoint's weights, and says so."""

import pytest
import torch

from classifiers import ClassifierError, load_classifier
from classifiers.train import train_classifier


def _run(out, train, val, **kwargs):
    return train_classifier(
        out,
        preset="tiny",
        device="cpu",
        train_set=train,
        val_set=val,
        workers=0,
        log=lambda *_: None,
        **kwargs,
    )


def test_init_starts_from_the_weights_and_is_recorded(tiny_checkpoint, fake_train, fake_val, tmp_path):
    source = load_classifier(tiny_checkpoint)
    # training at lr 0: the written parameters are exactly the init's (BatchNorm statistics move)
    result = _run(
        tmp_path / "warm", fake_train, fake_val, init=tiny_checkpoint,
        train_overrides={"steps": 2, "val_every": 2, "lr": 0.0, "weight_decay": 0.0},
    )  # fmt: skip
    warm = load_classifier(result.checkpoint)
    params = dict(warm.model.named_parameters())
    for name, tensor in source.model.named_parameters():
        assert torch.equal(params[name], tensor), name
    init = warm.meta["training"]["init"]
    assert init["path"] == str(tiny_checkpoint) and init["sha256"] == source.sha256
    assert init["trained_on"] == source.meta["trained_on"]
    # without --init the same run starts elsewhere and records none
    cold = _run(
        tmp_path / "cold", fake_train, fake_val,
        train_overrides={"steps": 2, "val_every": 2, "lr": 0.0, "weight_decay": 0.0},
    )  # fmt: skip
    cold_clf = load_classifier(cold.checkpoint)
    assert cold_clf.meta["training"]["init"] is None
    name, tensor = next(iter(source.model.named_parameters()))
    assert not torch.equal(dict(cold_clf.model.named_parameters())[name], tensor)


def test_init_that_does_not_fit_is_one_error_line(tiny_checkpoint, fake_train, fake_val, tmp_path):
    with pytest.raises(ClassifierError, match=r"--init .*weights do not fit the run's preset"):
        _run(
            tmp_path / "x", fake_train, fake_val, init=tiny_checkpoint,
            model_overrides={"init_features": 10}, train_overrides={"steps": 1, "val_every": 1},
        )  # fmt: skip
    with pytest.raises(ClassifierError, match="labels .* differ"):
        _run(
            tmp_path / "y", fake_train, fake_val, init=tiny_checkpoint, labels=["Any"],
            train_overrides={"steps": 1, "val_every": 1},
        )  # fmt: skip
    with pytest.raises(ClassifierError, match="missing.json|not found|no such"):
        _run(tmp_path / "z", fake_train, fake_val, init=tmp_path / "missing", train_overrides={"steps": 1})
