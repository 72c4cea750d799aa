"""Known answers for the objectives' KL terms (Harvey, Naderiparizi & Wood 2022, Eq. 10 and 15).

Each test fails under a specific mutation: the Gaussian KL with its arguments swapped, the decoder
accumulating KL(other || drawn) instead of KL(drawn || other), AIPO comparing the wrong pair of
distributions (q̂ against q instead of q against q̂), or AIPO-R not measuring q̂ against the prior.
"""

from __future__ import annotations

import math

import pytest
import torch

from generative.vdvae import gaussian_kl

from .conftest import tiny_model

SIZE = 32
LOG2 = math.log(2.0)
# KL(N(1, 2²) || N(0, 1)) = log(1/2) - 1/2 + (4 + 1)/2, and the swapped KL(N(0, 1) || N(1, 2²))
KL_Q_P = -math.log(2.0) - 0.5 + 2.5
KL_P_Q = math.log(2.0) - 0.5 + 2.0 / 8.0


def _gaussian(shape, mean: float, std: float):
    return torch.full(shape, mean), torch.full(shape, math.log(std))


def _latent_dims(model) -> int:
    zdim = model.config.zdim
    return sum(zdim * res * res for res, _ in model.vae.decoder.groups)


def test_gaussian_kl_known_answer_and_direction():
    q = _gaussian((1, 3), 1.0, 2.0)
    p = _gaussian((1, 3), 0.0, 1.0)
    torch.testing.assert_close(gaussian_kl(q, p), torch.tensor([3 * KL_Q_P]))
    torch.testing.assert_close(gaussian_kl(p, q), torch.tensor([3 * KL_P_Q]))
    assert gaussian_kl(q, q).abs().max() < 1e-6


def test_gaussian_kl_matches_monte_carlo():
    """Analytic KL(q || p) vs the sample mean of log q(z) - log p(z), z ~ q, within 4 standard errors."""
    g = torch.Generator().manual_seed(0)
    mq, lq = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.5, -0.7, 0.1]])
    mp, lp = torch.tensor([[-0.4, 0.5, 1.0]]), torch.tensor([[-0.2, 0.3, 0.9]])
    q = torch.distributions.Normal(mq, lq.exp())
    p = torch.distributions.Normal(mp, lp.exp())
    n = 200_000
    z = mq + lq.exp() * torch.randn(n, 3, generator=g, dtype=torch.float64).float()
    log_ratio = (q.log_prob(z) - p.log_prob(z)).double().sum(1)  # (n,)
    estimate, stderr = float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(n))
    analytic = float(gaussian_kl((mq, lq), (mp, lp)))
    swapped = float(gaussian_kl((mp, lp), (mq, lq)))
    assert abs(analytic - estimate) < 4 * stderr, (analytic, estimate, stderr)
    # the check can tell the two directions apart
    assert abs(swapped - estimate) > 20 * stderr


def test_aipo_bound_equals_reconstruction_when_partial_encoder_is_the_full_encoder():
    """q̂ = q on a full mask: every KL(q || q̂) vanishes and Eq. 10 is the reconstruction term."""
    model = tiny_model()
    with torch.no_grad():  # move q away from the (untrained, N(0, 1)) prior so the KL terms are large
        for head in model.vae.encoder.heads:
            head.c4.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(7))
    model.init_partial_from_encoder()  # mask channel zero: on a full mask q̂(z | I, 1) = q(z | I)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, SIZE, SIZE, generator=g)
    full = torch.ones_like(x)
    torch.manual_seed(0)
    with torch.no_grad():
        stats = model.losses(x, full, "aipo")
    torch.manual_seed(0)  # the same z ~ q(z | I) along the posterior path
    with torch.no_grad():
        nll, prior_kl = model.vae.elbo(x)
    dims = x[0].numel()
    reconstruction_bpd = float((nll / (dims * LOG2)).mean())
    assert float(stats["kl_partial_bpd"]) == pytest.approx(0.0, abs=1e-6)
    assert float(stats["cond_bpd"]) == pytest.approx(reconstruction_bpd, rel=1e-5)
    assert float(stats["nll_bpd"]) == pytest.approx(reconstruction_bpd, rel=1e-5)
    # the KL to the prior does not vanish: the vanishing KL(q || q̂) is not a degenerate zero
    assert float(prior_kl.min()) > 1.0


def _fixed(batch: int, zdim: int, mean: float, std: float):
    return lambda l, h: _gaussian((batch, zdim, h.shape[-1], h.shape[-1]), mean, std)


def test_decoder_accumulates_kl_of_the_drawn_distribution_to_the_other():
    model = tiny_model()
    batch, zdim = 2, model.config.zdim
    drawn, other = _fixed(batch, zdim, 1.0, 2.0), _fixed(batch, zdim, 0.0, 1.0)
    with torch.no_grad():
        _, kls = model.vae.decoder(batch, drawn, {"other": other})
    expected = KL_Q_P * _latent_dims(model)
    torch.testing.assert_close(kls["other"], torch.full((batch,), expected), rtol=1e-5, atol=1e-3)


def test_aipo_compares_the_posterior_against_the_partial_encoder(monkeypatch):
    """Eq. 10's KL term is KL(q(z|I) || q̂(z|Î)): with q = N(1, 2²) and q̂ = N(0, 1) it is KL_Q_P per dim."""
    model = tiny_model()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(x)
    zdim = model.config.zdim
    monkeypatch.setattr(model.vae, "posterior_fn", lambda x: _fixed(len(x), zdim, 1.0, 2.0))
    monkeypatch.setattr(model, "partial_fn", lambda x, m: _fixed(len(x), zdim, 0.0, 1.0))
    with torch.no_grad():
        stats = model.losses(x, mask, "aipo")
    expected_bpd = KL_Q_P * _latent_dims(model) / (x[0].numel() * LOG2)
    assert float(stats["kl_partial_bpd"]) == pytest.approx(expected_bpd, rel=1e-5)


def test_aipo_r_compares_the_partial_encoder_against_the_prior(monkeypatch):
    """Eq. 15's KL term is KL(q̂(z|Î) || p(z)); an untrained prior is exactly N(0, 1) (zero-init heads)."""
    model = tiny_model()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    zdim = model.config.zdim
    monkeypatch.setattr(model, "partial_fn", lambda x, m: _fixed(len(x), zdim, 1.0, 2.0))
    with torch.no_grad():
        stats = model.losses(x, torch.zeros_like(x), "aipo-r")
    expected_bpd = KL_Q_P * _latent_dims(model) / (x[0].numel() * LOG2)
    assert float(stats["kl_rev_bpd"]) == pytest.approx(expected_bpd, rel=1e-5)
    # nothing observed: the objective is the KL alone
    assert float(stats["rev_bpd"]) == pytest.approx(expected_bpd, rel=1e-5)
