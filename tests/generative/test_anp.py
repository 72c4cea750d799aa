"""Attentive Neural Process (Kim et al. 2019): context sets, the latent per completion, the ELBO."""

from __future__ import annotations

import torch

from generative.anp import ANP, FAMILY, coordinates, random_subsets

SIZE = 32


def _model() -> ANP:
    torch.manual_seed(0)
    return FAMILY.build_model(FAMILY.config("tiny")).eval()


def _inputs():
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(x)
    mask[:, :, :12] = 1
    return x, mask


def test_coordinates_are_pixel_centres_in_raster_order():
    grid = coordinates(4)
    assert grid.shape == (16, 2)
    assert grid[0].tolist() == [-0.75, -0.75] and grid[1].tolist() == [-0.75, -0.25]
    assert grid[-1].tolist() == [0.75, 0.75]


def test_random_subsets_pick_only_true_entries_up_to_the_cap():
    where = torch.zeros(3, 50, dtype=torch.bool)
    where[0, :5] = True
    where[1, 10:40] = True
    index, valid = random_subsets(where, 8, torch.Generator().manual_seed(0))
    assert index.shape == (3, 8)
    assert valid.sum(1).tolist() == [5, 8, 0]
    assert bool(where.gather(1, index)[valid].all())
    assert len(set(index[1].tolist())) == 8  # distinct


def test_context_is_the_observed_pixels_capped():
    model = _model()
    x, mask = _inputs()
    ctx, valid = model.context(x, mask, torch.Generator().manual_seed(0))
    assert valid.sum(1).tolist() == [model.config.context_cap] * 2  # 384 observed > cap 64
    rows = ((ctx[..., 0] + 1) / 2 * SIZE - 0.5).round()
    assert bool((rows[valid] < 12).all())  # only observed rows


def test_unobserved_pixels_do_not_change_the_completions():
    model = _model()
    x, mask = _inputs()
    other = torch.where(mask.bool(), x, torch.rand_like(x))
    with torch.no_grad():
        a = model.complete(x, mask, 3, generator=torch.Generator().manual_seed(1))
        b = model.complete(other, mask, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_one_latent_per_completion_makes_them_differ():
    model = _model()
    x, mask = _inputs()
    with torch.no_grad():
        out = model.complete(x, mask, 4, generator=torch.Generator().manual_seed(1))
        mu, sd = model.latent_prior(*model.context(x, mask, torch.Generator().manual_seed(1)))
    assert out.shape == (4, 2, 1, SIZE, SIZE)
    assert (out[0] - out[1]).abs().max() > 0
    assert mu.shape == sd.shape == (2, model.config.latent) and bool((sd >= 0.1).all())


def test_nothing_observed_uses_the_empty_context_point():
    model = _model()
    x = torch.zeros(2, 1, SIZE, SIZE)
    with torch.no_grad():
        out = model.complete(x, torch.zeros_like(x), 2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_elbo_terms_and_training_lowers_the_loss():
    torch.manual_seed(0)
    model = FAMILY.build_model(FAMILY.config("tiny")).train()
    x, mask = _inputs()
    x = x * 0 + torch.linspace(0, 1, SIZE).view(1, 1, 1, SIZE)  # a smooth image: easy to fit
    stats = model(x, mask)
    assert set(stats) >= {"loss", "nll", "kl", "mse"} and float(stats["kl"]) >= 0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(stats["loss"].detach())
    for _ in range(15):
        opt.zero_grad()
        model(x, mask)["loss"].backward()
        opt.step()
    assert float(model(x, mask)["loss"].detach()) < first
