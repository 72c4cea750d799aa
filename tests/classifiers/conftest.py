"""Shared fixtures: tiny fake data and a tiny trained checkpoint, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeDataset  # noqa: E402


@pytest.fixture(scope="session")
def fake_train() -> FakeDataset:
    return FakeDataset(n=96, size=32, seed=0)


@pytest.fixture(scope="session")
def fake_val() -> FakeDataset:
    return FakeDataset(n=48, size=32, seed=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, fake_train, fake_val) -> Path:
    """A tiny classifier trained for a few steps on the fake data (stem path)."""
    from classifiers.train import train_classifier

    out = tmp_path_factory.mktemp("clf") / "tiny"
    train_classifier(
        out,
        preset="tiny",
        device="cpu",
        train_set=fake_train,
        val_set=fake_val,
        train_overrides={"steps": 12, "val_every": 6},
        log=lambda *_: None,
    )
    return out
