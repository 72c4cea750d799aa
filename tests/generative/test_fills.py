"""Training-free fills: harmonic and biharmonic known answers, TV inpainting, the mean image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generative.errors import SamplerError
from generative.fills import (
    EMPTY_FILL,
    _div,
    _grad,
    build_harmonic,
    build_mean,
    build_mean_image,
    build_tv,
    harmonic_fill,
    total_variation,
    tv_fill,
)
from generative.registry import build_sampler

S = 24


def _hole(size=S, lo=6, hi=18):
    m = torch.ones(1, 1, size, size)
    m[..., lo:hi, lo:hi] = 0
    return m


RAMP = torch.linspace(0, 1, S).expand(S, S).reshape(1, 1, S, S).clone()
EDGE = (torch.arange(S) >= S // 2).float().expand(S, S).reshape(1, 1, S, S).clone()


@pytest.mark.parametrize("method", ["harmonic", "biharmonic"])
def test_linear_images_are_filled_exactly(method):
    # a linear function is harmonic and biharmonic: the fill of an interior hole is the ramp itself
    mask = _hole()
    out = build_harmonic(preset="tiny", method=method).fill(RAMP * mask, mask)
    torch.testing.assert_close(out, RAMP, atol=1e-5, rtol=0)


def test_harmonic_pixel_is_the_mean_of_its_neighbours():
    # the discrete mean-value property, with zero flux at the image border (hole touches it)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(S, S, generator=g).double().numpy()
    known = np.ones((S, S), bool)
    known[0:9, 3:15] = False
    u = harmonic_fill(img, known)
    assert np.array_equal(u[known], img[known])
    for r, c in zip(*np.nonzero(~known), strict=True):
        nb = [
            u[r + dr, c + dc]
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= r + dr < S and 0 <= c + dc < S
        ]
        assert abs(u[r, c] - np.mean(nb)) < 1e-9


def test_grad_and_div_are_negative_adjoints():
    g = torch.Generator().manual_seed(1)
    u = torch.rand(2, 1, 7, 9, generator=g, dtype=torch.float64)
    p = torch.rand(2, 2, 7, 9, generator=g, dtype=torch.float64)
    assert torch.allclose((_grad(u) * p).sum(), -(u * _div(p)).sum())


def test_tv_continues_an_edge_across_the_hole():
    # the TV minimiser across a straight edge is the edge; the harmonic fill blurs it
    mask = _hole()
    tv = tv_fill(EDGE * mask, mask, iterations=1000)
    harm = build_harmonic(preset="tiny").fill(EDGE * mask, mask)
    assert float(total_variation(tv)) <= 1.005 * float(total_variation(EDGE))
    assert float(total_variation(harm)) > 1.05 * float(total_variation(EDGE))
    assert (tv - EDGE).abs().max() < 0.05
    assert torch.equal(tv[mask.bool()], EDGE[mask.bool()])  # observed pixels kept exactly


def test_nothing_observed_is_the_constant_fill():
    x = torch.zeros(2, 1, 8, 8)
    m = torch.zeros_like(x)
    assert torch.all(tv_fill(x, m, 5) == EMPTY_FILL)
    assert np.all(harmonic_fill(x[0, 0].numpy(), m[0, 0].numpy() > 0) == EMPTY_FILL)


def test_fills_are_deterministic_samplers():
    mask = _hole(32, 8, 24)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    for name in ("harmonic", "tv"):
        s = build_sampler(name, preset="tiny")
        out = s.sample(x * mask, mask.expand_as(x), 3).images
        assert s.deterministic and torch.equal(out[0], out[2]) and out.shape == (3, 2, 1, 32, 32)


def test_mean_image_fills_the_hole_with_the_training_mean(tmp_path):
    imgs = torch.stack([torch.full((1, S, S), 0.2), torch.full((1, S, S), 0.6)])
    path = build_mean_image(imgs, tmp_path / "mean", data={"train": {"n": 2}})
    s = build_sampler("mean", path, preset="tiny")
    mask = _hole()
    out = s.sample(RAMP * mask, mask, 2).images
    hole = ~mask.bool()
    assert torch.allclose(out[0][hole], torch.tensor(0.4)) and torch.equal(out[0][~hole], RAMP[~hole])
    assert s.meta["data"] == {"train": {"n": 2}} and len(s.sha256) == 64


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(SamplerError, match="needs no checkpoint"):
        build_harmonic(tmp_path / "x")
    with pytest.raises(SamplerError, match="biharmonic"):
        build_harmonic(method="cubic")
    with pytest.raises(SamplerError, match="iterations"):
        build_tv(iterations=0)
    with pytest.raises(SamplerError, match="unknown preset"):
        build_tv(preset="huge")
    with pytest.raises(SamplerError, match="NaN or inf"):
        build_mean_image(torch.full((2, 1, 4, 4), float("nan")), tmp_path / "m")
    with pytest.raises(SamplerError, match="\\(N, 1, S, S\\)"):
        build_mean_image(torch.rand(2, 4, 4), tmp_path / "m")
    from generative.retrieval import build_index

    idx = build_index(torch.rand(3, 1, 8, 8), tmp_path / "idx")
    with pytest.raises(SamplerError, match="not a mean-image file"):
        build_mean(idx)
