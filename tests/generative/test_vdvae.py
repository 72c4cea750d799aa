"""Hierarchical VAE pieces: architecture strings, blocks, KL, the discretised logistic likelihood."""

from __future__ import annotations

import math

import pytest
import torch

from generative.errors import SamplerError
from generative.likelihood import bits_per_dim, dmol_log_prob, dmol_sample
from generative.vdvae import (
    Architecture,
    Block,
    Decoder,
    Encoder,
    HierarchicalVAE,
    gaussian_kl,
    parse_decoder,
    parse_encoder,
)

ARCH = Architecture(
    image_size=16,
    width=8,
    zdim=3,
    enc_blocks="16x1,16d2,8d2,4d4,1x1",
    dec_blocks="1x1,4m1,4x1,8m4,16m8",
    n_mixtures=2,
)

PARSE_CASES = [
    (parse_encoder, "32x2,32d2,16x1", [(32, None), (32, None), (32, 2), (16, None)]),
    (parse_encoder, "4d4,1x1", [(4, 4), (1, None)]),
    (parse_decoder, "1x1,4m1,4x2", [(1, None), (4, 1), (4, None), (4, None)]),
]


@pytest.mark.parametrize("fn,spec,expected", PARSE_CASES)
def test_parse(fn, spec, expected):
    assert fn(spec) == expected


@pytest.mark.parametrize("fn,spec", [(parse_encoder, "32y2"), (parse_decoder, "4q1")])
def test_parse_rejects_bad_blocks(fn, spec):
    with pytest.raises(SamplerError):
        fn(spec)


@pytest.mark.parametrize(
    "res,down,shape", [(8, None, (2, 6, 8, 8)), (8, 2, (2, 6, 4, 4)), (2, None, (2, 6, 2, 2))]
)
def test_block_shapes(res, down, shape):
    block = Block(6, 2, 6, res=res, down=down, residual=True)
    assert block(torch.randn(2, 6, res, res)).shape == shape


def test_zero_last_block_starts_at_zero():
    block = Block(4, 2, 5, res=4, zero_last=True)
    assert torch.equal(block(torch.randn(1, 4, 4, 4)), torch.zeros(1, 5, 4, 4))


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(3, 2, 4, 4, generator=g), 0.3 * torch.randn(3, 2, 4, 4, generator=g))
    p = (torch.randn(3, 2, 4, 4, generator=g), 0.3 * torch.randn(3, 2, 4, 4, generator=g))
    dq = torch.distributions.Normal(q[0], q[1].exp())
    dp = torch.distributions.Normal(p[0], p[1].exp())
    expected = torch.distributions.kl_divergence(dq, dp).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(q, p), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(gaussian_kl(q, q), torch.zeros(3), atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_dmol_is_a_distribution_over_256_levels(k):
    g = torch.Generator().manual_seed(k)
    params = torch.randn(1, 3 * k, 1, 1, generator=g)
    levels = torch.arange(256, dtype=torch.float32).view(256, 1, 1, 1) / 127.5 - 1.0
    logp = dmol_log_prob(params.expand(256, -1, -1, -1), levels)
    assert logp.shape == (256, 1, 1, 1)
    assert math.isclose(float(logp.exp().sum()), 1.0, abs_tol=1e-3)


def test_dmol_sample_range_and_seed():
    params = torch.randn(2, 9, 8, 8)
    a = dmol_sample(params, generator=torch.Generator().manual_seed(0), noise=True)
    b = dmol_sample(params, generator=torch.Generator().manual_seed(0), noise=True)
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_bits_per_dim():
    assert math.isclose(float(bits_per_dim(torch.tensor(math.log(2) * 64), 64)), 1.0, rel_tol=1e-6)


def test_encoder_activations_at_every_resolution():
    acts = Encoder(ARCH).activations(torch.randn(2, 1, 16, 16))
    assert {r: tuple(a.shape) for r, a in acts.items()} == {
        16: (2, 8, 16, 16),
        8: (2, 8, 8, 8),
        4: (2, 8, 4, 4),
        1: (2, 8, 1, 1),
    }


def test_decoder_groups_and_output():
    dec = Decoder(ARCH)
    out, kls = dec(3, None, {"prior": "prior"})
    assert out.shape == (3, 3 * ARCH.n_mixtures, 16, 16)
    assert len(dec.groups) == 5
    assert torch.allclose(kls["prior"], torch.zeros(3))  # z drawn from the prior itself


def test_elbo_and_unconditional_samples():
    torch.manual_seed(0)
    vae = HierarchicalVAE(ARCH)
    x = torch.rand(2, 1, 16, 16)
    nll, kl = vae.elbo(x)
    assert nll.shape == kl.shape == (2,)
    assert (kl >= 0).all() and torch.isfinite(nll).all()
    assert vae.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 16, 16)
    with pytest.raises(SamplerError):
        vae.elbo(torch.rand(2, 1, 8, 8))
