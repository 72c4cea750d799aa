"""AIPO / AIPO-R objectives, the pretrained mode and the one-pass batched sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from generative.aipo import AIPO, partial_input
from generative.config import OBJECTIVES
from generative.errors import SamplerError

from .conftest import tiny_model

SIZE = 32


def _batch(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, SIZE, SIZE, generator=g)
    m = (torch.rand(batch, 1, SIZE, SIZE, generator=g) > 0.6).float()
    return x, m


# objective -> the stats it must report
STATS = {
    "vae": {"loss", "elbo_bpd", "nll_bpd", "kl_bpd"},
    "aipo": {"loss", "cond_bpd", "nll_bpd", "kl_partial_bpd"},
    "aipo-r": {"loss", "rev_bpd", "kl_rev_bpd"},
    "vae+aipo": {"loss", "elbo_bpd", "cond_bpd", "kl_bpd", "kl_partial_bpd", "nll_bpd"},
    "vae+aipo-r": {"loss", "elbo_bpd", "rev_bpd", "kl_bpd", "kl_rev_bpd", "nll_bpd"},
}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objectives_are_finite_and_train_the_right_parts(objective):
    model = tiny_model().train()
    x, m = _batch()
    stats = model.losses(x, m, objective)
    assert set(stats) == STATS[objective]
    assert all(torch.isfinite(v) for v in stats.values())
    stats["loss"].backward()
    partial_grad = any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.partial_encoder.parameters()
    )
    encoder_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vae.encoder.parameters())
    assert partial_grad == (objective != "vae")
    assert encoder_grad == (objective != "aipo-r")


def test_unknown_objective():
    with pytest.raises(SamplerError, match="valid"):
        tiny_model().losses(*_batch(), "elbo")


def test_aipo_r_without_observations_is_kl_to_the_prior_only():
    model = tiny_model()
    x, _ = _batch()
    torch.manual_seed(0)
    stats = model.losses(x, torch.zeros_like(x), "aipo-r")
    assert torch.allclose(stats["rev_bpd"], stats["kl_rev_bpd"])


def test_bounds_shapes_and_order():
    model = tiny_model()
    x, m = _batch()
    b = model.bounds(x, m)
    assert b["elbo"].shape == b["cond"].shape == (3,)
    # log-likelihood of 8-bit images is at most 0: both bounds are negative
    assert (b["elbo"] < 0).all() and (b["cond"] < 0).all()


def test_pretrained_mode_freezes_the_vae_and_copies_the_encoder():
    model = tiny_model()
    model.init_partial_from_encoder()
    model.freeze_vae()
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert all(p.requires_grad for p in model.partial_encoder.parameters())
    x, _ = _batch()
    full = model.vae.encoder.activations(x * 2 - 1)
    # fully observed: cat([x, 1]) through the copied weights equals the full encoder on x
    partial = model.partial_encoder.activations(torch.cat([x * 2 - 1, torch.ones_like(x)], 1))
    for res in full:
        torch.testing.assert_close(partial[res], full[res])


def test_partial_input_hides_unobserved_pixels():
    x = torch.rand(2, 1, 4, 4)
    m = torch.zeros(2, 1, 4, 4)
    m[:, :, :2] = 1
    inp = partial_input(x, m)
    assert inp.shape == (2, 2, 4, 4)
    assert torch.equal(inp[:, 1:], m)
    assert torch.equal(inp[:, :1, 2:], torch.zeros(2, 1, 2, 4))


def test_partial_encoder_runs_once_per_image(monkeypatch):
    model = tiny_model()
    calls = []
    original = model.partial_encoder.activations

    def spy(inp):
        calls.append(inp.shape[0])
        return original(inp)

    monkeypatch.setattr(model.partial_encoder, "activations", spy)
    x, m = _batch(batch=2)
    out = model.complete(x * m, m, 10)
    assert out.shape == (10, 2, 1, SIZE, SIZE)
    assert calls == [2]


def test_completions_are_n_major():
    """Completion j of image b is the image-b sample: same result as sampling image b alone."""
    model = tiny_model()
    x, m = _batch(batch=2)
    # all-observed image 0, nothing observed image 1: image 0's completions equal the input
    m[0] = 1
    m[1] = 0
    out = model.complete(x * m, m, 4)
    assert torch.equal(out[:, 0], x[0].expand(4, 1, SIZE, SIZE))
    assert not torch.equal(out[0, 1], out[1, 1])


def test_model_is_constructible_for_each_objective_config():
    base = tiny_model().config
    for objective in OBJECTIVES:
        assert isinstance(AIPO(dataclasses.replace(base, objective=objective)), AIPO)
