"""generative.autoregressive (quantisation, likelihoods, the raster sampler) and the causality helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from generative.autoregressive import (
    bits_per_dim,
    dequantise,
    draw_categorical,
    log_likelihood,
    quantise,
    raster_positions,
    sample_raster,
)

from .causality import assert_causal, causality_violations, missing_dependencies, receptive_field_covers_past


def test_quantise_known_values_and_round_trip():
    x = torch.tensor([0.0, 0.49 / 31, 0.51 / 31, 0.5, 1.0, 1.2, -0.1]).reshape(1, 1, 1, 7)
    q = quantise(x, 32)
    assert q.dtype == torch.long
    assert q.flatten().tolist() == [0, 0, 1, 16, 31, 31, 0]  # round(0.5*31) = round(15.5) = 16 (half to even)
    levels = torch.arange(32).reshape(1, 1, 4, 8)
    assert torch.equal(quantise(dequantise(levels, 32), 32), levels)
    assert dequantise(torch.tensor([31]), 32).item() == 1.0
    with pytest.raises(ValueError):
        quantise(x, 1)


def test_log_likelihood_known_answer():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 3, generator=g)
    q = torch.randint(0, 5, (2, 1, 3, 3), generator=g)
    where = torch.rand(2, 1, 3, 3, generator=g) > 0.5
    expected = torch.zeros(2)
    for m in range(2):
        for i in range(3):
            for j in range(3):
                if where[m, 0, i, j]:
                    expected[m] += F.log_softmax(logits[m, :, i, j], 0)[q[m, 0, i, j]]
    assert torch.allclose(log_likelihood(logits, q, where), expected, atol=1e-6)
    # a -inf logit outside `where` must not turn the sum into NaN
    logits[:, :, ~where[0, 0]] = -math.inf
    logits[:, 0] = 0.0
    assert torch.isfinite(log_likelihood(logits, torch.zeros_like(q), where)).all()


def test_bits_per_dim():
    assert bits_per_dim(64 * math.log(2.0) * 3, 64) == pytest.approx(3.0)


def test_raster_positions_skip_pixels_observed_everywhere():
    mask = torch.ones(3, 1, 2, 3)
    mask[0, 0, 0, 2] = 0
    mask[2, 0, 1, 0] = 0
    assert raster_positions(mask) == [(0, 2), (1, 0)]


def test_draw_categorical_frequencies_and_temperature():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).repeat(20000, 1)
    g = torch.Generator().manual_seed(1)
    drawn = draw_categorical(logits, generator=g)
    freq = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015)
    cold = draw_categorical(logits, temperature=1e-3, generator=g)
    assert (cold == 2).all()
    with pytest.raises(ValueError):
        draw_categorical(logits, temperature=0.0)


def _copy_left(levels: int, sharp: float = 40.0):
    """A causal toy model: pixel (i, j) is the level of its left neighbour + 1 (mod K); column 0 uniform."""

    calls = []

    def fn(canvas, mask):
        calls.append(1)
        q = quantise(canvas, levels)  # (M, 1, H, W)
        nxt = (q + 1) % levels
        left = torch.roll(nxt, 1, dims=3)
        logits = sharp * F.one_hot(left[:, 0], levels).permute(0, 3, 1, 2).float()
        logits[:, :, :, 0] = 0.0  # no left neighbour: uniform
        return logits

    return fn, calls


def test_sample_raster_known_answer_and_skips_observed():
    levels, h, w = 8, 3, 4
    observed = torch.zeros(2, 1, h, w)
    observed[0, 0, :, 0] = dequantise(torch.tensor([1, 3, 5]), levels)
    observed[1, 0, :, 0] = dequantise(torch.tensor([0, 2, 7]), levels)
    mask = torch.zeros(2, 1, h, w)
    mask[:, :, :, 0] = 1  # column 0 observed in both images: never visited
    fn, calls = _copy_left(levels)
    images, log_lik = sample_raster(fn, observed, mask, 3, levels, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 2, 1, h, w) and log_lik.shape == (3, 2)
    assert len(calls) == h * (w - 1)
    q = quantise(images, levels)
    first = torch.tensor([[1, 3, 5], [0, 2, 7]])
    for b in range(2):
        for j in range(w):
            assert torch.equal(q[:, b, 0, :, j], ((first[b] + j) % levels).expand(3, h))
    # every drawn pixel had probability 1 - 7e^-40: log-likelihood 0 to float precision
    assert log_lik.abs().max() < 1e-6


def test_sample_raster_uniform_model_likelihood_and_observed_kept():
    levels = 4
    observed = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    mask = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    uniform = lambda canvas, m: torch.zeros(canvas.shape[0], levels, 4, 4)  # noqa: E731
    images, log_lik = sample_raster(
        uniform, observed, mask, 5, levels, generator=torch.Generator().manual_seed(0)
    )
    missing = (1 - mask).sum(dim=(1, 2, 3))  # (B,)
    assert torch.allclose(log_lik, (-missing * math.log(levels)).expand(5, 2))
    obs_q = dequantise(quantise(observed, levels), levels)
    assert torch.equal(images[:, mask.bool()], obs_q[mask.bool()].expand(5, -1))
    # different draws differ; the same seed repeats them
    again, _ = sample_raster(uniform, observed, mask, 5, levels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)
    assert not torch.equal(images[0], images[1])


def test_sample_raster_likelihood_is_the_models_at_any_temperature():
    levels = 3
    probs = torch.tensor([0.2, 0.3, 0.5])
    fn = lambda canvas, m: torch.log(probs).reshape(1, 3, 1, 1).expand(canvas.shape[0], 3, 2, 2)  # noqa: E731
    obs, mask = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    images, log_lik = sample_raster(fn, obs, mask, 4, levels, temperature=1e-3, generator=torch.Generator())
    assert (quantise(images, levels) == 2).all()
    assert torch.allclose(log_lik, torch.full((4, 1), 4 * math.log(0.5)))


# -- causality helpers ------------------------------------------------------------------------------------
class MaskedConv(nn.Conv2d):
    """A PixelCNN masked convolution (type A excludes the centre; B includes it)."""

    def __init__(self, cin, cout, k, kind):
        super().__init__(cin, cout, k, padding=k // 2)
        m = torch.ones_like(self.weight)
        m[:, :, k // 2, k // 2 + (kind == "B") :] = 0
        m[:, :, k // 2 + 1 :] = 0
        self.register_buffer("m", m)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.m, self.bias, padding=self.padding)


def _pixelcnn(layers: int = 4) -> nn.Module:
    torch.manual_seed(0)
    mods = [MaskedConv(1, 8, 3, "A")]
    for _ in range(layers - 1):
        mods += [nn.Tanh(), MaskedConv(8, 8, 3, "B")]
    return nn.Sequential(*mods).eval()


def test_assert_causal_passes_masked_and_fails_unmasked():
    assert_causal(_pixelcnn(), (2, 1, 6, 6))
    torch.manual_seed(0)
    leaky = nn.Conv2d(1, 4, 3, padding=1).eval()
    with pytest.raises(AssertionError, match="not causal"):
        assert_causal(leaky, (1, 1, 5, 5))
    # mask type B in the first layer sees its own pixel: a violation at the pixel itself
    torch.manual_seed(0)
    own = MaskedConv(1, 4, 3, "B").eval()
    found = causality_violations(own, (1, 1, 4, 4))
    assert found and all(p == q for p, q, _ in found)


def test_blind_spot_of_stacked_masked_convolutions_is_found():
    net = _pixelcnn(layers=6)
    assert receptive_field_covers_past(net, (1, 1, 6, 6))  # the last pixel has nothing to its right
    missing = missing_dependencies(net, (1, 1, 6, 6), pixel=(5, 2))
    assert missing and all(c > 2 for _, c in missing)  # the blind spot lies up and to the right
    assert not receptive_field_covers_past(net, (1, 1, 6, 6), pixel=(5, 2))
