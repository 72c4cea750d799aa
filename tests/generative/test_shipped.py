"""The shipped cpu-preset checkpoint: present, small, loads by default and samples consistently."""

from __future__ import annotations

import pytest
import torch

from boed.runtime.checkpoints import checkpoint_paths, read_meta
from generative.registry import build_sampler, shipped_checkpoint

SHIPPED = shipped_checkpoint("cpu")
pytestmark = pytest.mark.skipif(not checkpoint_paths(SHIPPED)[1].is_file(), reason="no shipped checkpoint")


def test_shipped_checkpoint_is_small_and_described():
    weights, _ = checkpoint_paths(SHIPPED)
    assert weights.stat().st_size <= 20 * 2**20
    meta = read_meta(SHIPPED)
    assert meta["kind"] == "sampler" and meta["image_size"] == 64
    assert meta["data"]["train"]["source"] == "phantoms"
    assert meta["metrics"]["val_elbo_bpd"] < 6
    assert "train-sampler" in meta["training"]["command"]


def test_default_sampler_completes_a_phantom():
    sampler = build_sampler("aipo")
    assert sampler.name == "aipo" and sampler.image_size == 64
    assert sampler.sha256 == read_meta(SHIPPED)["sha256"]
    from datasets.phantoms import generate_phantoms

    x = generate_phantoms(1, 64, seed=5).images
    mask = torch.zeros_like(x)
    mask[..., 8:40, 8:40] = 1
    out = sampler.sample(x * mask, mask, 4, generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (4, 1, 1, 64, 64)
    assert torch.equal(out[:, :, :, 8:40, 8:40], x[..., 8:40, 8:40].expand(4, 1, 1, 32, 32))
    # a trained model completes close to the truth on average (an untrained one is far: ~0.3)
    assert (out - x).abs().mean() < 0.12
