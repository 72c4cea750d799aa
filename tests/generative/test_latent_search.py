"""The latent-search losses and the search itself (Yeh et al. 2017 §3, Vitoria et al. 2018 §3.2)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from generative.gan.latent_search import (
    SearchOptions,
    context_loss,
    gradient_loss,
    importance_weights,
    latent_search,
    masked_gradients,
    total_loss,
)


def test_importance_weights_by_hand():
    # 9×9, one missing pixel at (4, 4), window 7: an observed pixel within Chebyshev distance 3
    # sees the hole pixel in its window; |N(i)| counts the in-image pixels of the window
    mask = torch.ones(1, 1, 9, 9)
    mask[..., 4, 4] = 0
    w = importance_weights(mask, 7)[0, 0]
    assert w[4, 4] == 0  # a missing pixel weighs nothing
    assert w[0, 0] == 0  # too far from the hole (distance 4)
    assert w[4, 3] == pytest.approx(1 / 49)  # full 7×7 window
    assert w[1, 1] == pytest.approx(1 / 25)  # window cut to rows 0..4, cols 0..4
    assert w[4, 1] == pytest.approx(1 / 35)  # rows 1..7, cols 0..4
    assert w[7, 7] == pytest.approx(1 / 25)  # rows 4..8, cols 4..8
    assert w[4, 7] == pytest.approx(1 / 35)  # rows 1..7, cols 4..8
    assert w[4, 8] == 0  # cols 5..8: the hole is 4 columns away


def test_importance_weights_grow_towards_the_hole():
    # observed pixels next to the hole count most (the inverted weighting of one public
    # implementation, by the fraction of *observed* neighbours, would rank them last)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 6:10, 6:10] = 0
    w = importance_weights(mask)[0, 0]
    row = w[8]
    assert row[5] > row[4] > row[3] > 0 and row[2] == 0
    assert row[5] == pytest.approx(4 * 3 / 49)  # window rows 5..11 × cols 2..8: 4 × 3 hole pixels
    assert torch.all(w[mask[0, 0] == 0] == 0)


def test_masked_gradients_use_one_sided_differences_at_the_hole():
    f = torch.tensor([[0.0, 1.0, 4.0, 9.0, 16.0]])
    m = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    _, dc = masked_gradients(f, m)
    # col 0: forward (image edge); col 1: backward (col 2 missing); col 3: forward; col 4: backward
    assert dc[0].tolist() == [1.0, 1.0, 0.0, 7.0, 7.0]
    _, full = masked_gradients(f, torch.ones_like(m))
    assert full[0].tolist() == [1.0, 2.0, 4.0, 6.0, 7.0]  # central inside, one-sided at the edges
    isolated = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]])
    assert masked_gradients(f, isolated)[1][0, 1] == 0  # no observed neighbour: no gradient
    dr, _ = masked_gradients(f.T.contiguous(), m.T.contiguous())  # the same along rows
    assert dr[:, 0].tolist() == [1.0, 1.0, 0.0, 7.0, 7.0]


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(2, 1, 10, 10, generator=g)
    mask = torch.ones(2, 1, 10, 10)
    mask[:, :, 3:7, 2:8] = 0
    return y, mask, importance_weights(mask)


def test_contextual_losses_ignore_the_hole_and_see_its_border():
    y, mask, w = _case()
    gz = y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    lc, lg = context_loss(gz, y, w), gradient_loss(gz, y, mask, w)
    changed = gz + 5 * (1 - mask)  # anything inside the hole
    assert torch.allclose(context_loss(changed, y, w), lc) and torch.allclose(
        gradient_loss(changed, y, mask, w), lg
    )
    assert torch.allclose(lc, (w * (gz - y)).abs().sum((1, 2, 3)))
    shifted = y + 0.5  # the same gradients, other values: L_g is blind to it, L_c is not
    assert torch.allclose(gradient_loss(shifted, y, mask, w), torch.zeros(2), atol=1e-5)
    assert torch.all(context_loss(shifted, y, w) > 1)
    bumped = y.clone()
    bumped[:, :, 2, 4] += 1.0  # next to the hole (row 2 borders rows 3..6)
    assert torch.all(context_loss(bumped, y, w) > 0) and torch.all(gradient_loss(bumped, y, mask, w) > 0)


def test_total_loss_of_each_variant():
    y, mask, w = _case()
    gz = (y + 0.2).unsqueeze(0).expand(3, -1, -1, -1, -1)
    d = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-3.0, 1.0]])
    lc, lg = context_loss(gz, y, w), gradient_loss(gz, y, mask, w)
    o = SearchOptions()
    yeh = total_loss(dataclasses.replace(o, loss="yeh"), gz, d, y, mask, w)
    # λ·log(1 − D) with D = sigmoid(logit)
    assert torch.allclose(yeh, lc + 0.003 * torch.log(1 - torch.sigmoid(d)), atol=1e-6)
    grad = total_loss(dataclasses.replace(o, loss="yeh+grad"), gz, d, y, mask, w)
    assert torch.allclose(
        grad, 0.1 * lc + 0.9 * lg + 0.5 * 0.003 * torch.log(1 - torch.sigmoid(d)), atol=1e-6
    )
    vit = total_loss(o, gz, d, y, mask, w)
    assert torch.allclose(vit, 0.1 * lc + 0.9 * lg - 0.5 * d)
    with pytest.raises(ValueError, match="unknown loss"):
        total_loss(dataclasses.replace(o, loss="l2"), gz, d, y, mask, w)


class ToyGAN(torch.nn.Module):
    """``G(z) = sigmoid(A z)`` on 8×8 images and a linear critic: small, smooth, seeded."""

    def __init__(self, zdim: int = 6, size: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(size * size, zdim, generator=g)
        self.c = torch.randn(size * size, generator=g) / size
        self.size = size

    def generate(self, z):
        return torch.sigmoid(z @ self.a.T).view(-1, 1, self.size, self.size)

    def critic(self, x):
        return x.flatten(1) @ self.c


def _search_inputs(b=2):
    toy = ToyGAN()
    truth = toy.generate(torch.rand(b, 6, generator=torch.Generator().manual_seed(5)) * 2 - 1)
    mask = torch.ones(b, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 0
    return toy, truth * mask, mask


def test_batched_search_equals_separate_searches():
    toy, y, mask = _search_inputs()
    o = SearchOptions(loss="vitoria", iterations=40, lr=0.05, patience=8, tol=1e-2)
    z0 = torch.rand(3, 2, 6, generator=torch.Generator().manual_seed(1)) * 2 - 1
    batched = latent_search(toy.generate, toy.critic, z0, y, mask, o)
    assert batched.iterations.min() < 40  # some searches stopped early, each on its own plateau
    for i in range(3):
        for j in range(2):
            one = latent_search(
                toy.generate, toy.critic, z0[i : i + 1, j : j + 1], y[j : j + 1], mask[j : j + 1], o
            )
            assert torch.allclose(one.z[0, 0], batched.z[i, j], atol=1e-6)
            assert one.iterations[0, 0] == batched.iterations[i, j]


def test_search_fits_the_observed_pixels_and_stays_in_the_box():
    toy, y, mask = _search_inputs()
    z0 = torch.rand(4, 2, 6, generator=torch.Generator().manual_seed(2)) * 2 - 1
    o = SearchOptions(loss="yeh", iterations=300, lr=0.05, patience=0)
    w = importance_weights(mask)
    start = context_loss(toy.generate(z0.flatten(0, 1)).view(4, 2, 1, 8, 8), y, w)
    found = latent_search(toy.generate, toy.critic, z0, y, mask, o, bounds=(-1.0, 1.0))
    assert found.z.abs().max() <= 1.0
    assert found.images.shape == (4, 2, 1, 8, 8)
    assert torch.all(context_loss(found.images, y, w) < 0.2 * start)
    assert torch.all(found.iterations == 300)


def test_a_flat_loss_stops_after_patience():
    y = torch.rand(1, 1, 8, 8)
    mask = torch.ones_like(y)
    mask[..., :4, :] = 0
    const = lambda z: torch.zeros(len(z), 1, 8, 8) + 0 * z.sum(1).view(-1, 1, 1, 1)  # noqa: E731
    zero_critic = lambda x: x.flatten(1).sum(1) * 0  # noqa: E731
    o = SearchOptions(iterations=500, patience=20)
    found = latent_search(const, zero_critic, torch.zeros(2, 1, 4), y, mask, o)
    assert torch.all(found.iterations == 21)  # the first iteration sets the best; 20 without gain


def test_langevin_spreads_the_completions_more_and_is_seeded():
    toy, y, mask = _search_inputs(1)
    z0 = torch.zeros(6, 1, 6)  # identical starts: a MAP search returns 6 copies
    o = SearchOptions(loss="vitoria", iterations=50, lr=0.05, patience=0)
    plain = latent_search(toy.generate, toy.critic, z0, y, mask, o)
    assert torch.allclose(plain.images, plain.images[:1].expand_as(plain.images))
    noisy_o = dataclasses.replace(o, langevin=0.5)
    run = lambda s: latent_search(  # noqa: E731
        toy.generate, toy.critic, z0, y, mask, noisy_o, generator=torch.Generator().manual_seed(s)
    )
    a, b = run(0), run(0)
    assert torch.equal(a.z, b.z)
    assert a.images.std(0).mean() > 1e-3 and not torch.equal(a.z, run(1).z)


def test_importance_window_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        importance_weights(torch.ones(1, 1, 4, 4), 4)
    assert F is not None
