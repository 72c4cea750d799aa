"""Tiny untrained AIPO checkpoints built once per test session (seeded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generative.aipo import AIPO
from generative.config import get_config


def tiny_model(seed: int = 0, **changes) -> AIPO:
    torch.manual_seed(seed)
    return AIPO(get_config("tiny", **changes)).eval()


def fake_masks(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Stand-in for datasets.masks.aipo_masks: 0-2 random squares of side size/3."""
    side = size // 3
    masks = torch.zeros(n, 1, size, size)
    counts = torch.randint(0, 3, (n,), generator=generator)
    for i in range(n):
        for _ in range(int(counts[i])):
            r, c = torch.randint(0, size - side + 1, (2,), generator=generator).tolist()
            masks[i, :, r : r + side, c : c + side] = 1
    return masks


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from boed.runtime.checkpoints import save_checkpoint
    from boed.runtime.training import TrainState
    from generative.aipo import FAMILY
    from generative.training import TrainOptions, sampler_meta

    model = tiny_model()
    path = tmp_path_factory.mktemp("aipo") / "tiny-aipo"
    options = TrainOptions(out=path)
    meta = sampler_meta(FAMILY, "aipo", model.config, TrainState(), options, {}, data={"source": "random"})
    save_checkpoint(path, model.tensors(), meta)
    return path


@pytest.fixture(scope="session")
def tiny_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    # smooth blobs on a dark background: enough structure for a few training steps
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    centres = torch.rand(24, 2, generator=g) - 0.5
    r2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    return torch.exp(-r2 / 0.2).unsqueeze(1).clamp(0, 1)
