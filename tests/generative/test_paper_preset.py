"""The ``paper`` preset: the VD-VAE FFHQ-256 architecture at 256×256 (slow: minutes and ~10 GB on CPU)."""

from __future__ import annotations

import pytest
import torch

from generative.aipo import AIPO, AIPOSampler
from generative.config import get_config


@pytest.mark.slow
def test_paper_preset_builds_trains_one_step_and_samples():
    torch.manual_seed(0)
    config = get_config("paper")
    model = AIPO(config)
    millions = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    # appendix B.1: 115 M parameters in encoder + decoder for FFHQ-256 (and Chest X-ray 14)
    assert 110 < millions(model.vae) < 120
    assert len(model.vae.decoder.groups) == 66
    x = torch.rand(1, 1, 256, 256)
    m = torch.zeros_like(x)
    m[..., 64:128, 64:128] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    stats = model.losses(x, m, config.objective)
    stats["loss"].backward()
    opt.step()
    assert torch.isfinite(stats["loss"])
    out = AIPOSampler(model.eval()).sample(x * m, m, 2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 1, 1, 256, 256)
    assert torch.equal(out.images[:, :, :, 64:128, 64:128], x[..., 64:128, 64:128].expand(2, 1, 1, 64, 64))
