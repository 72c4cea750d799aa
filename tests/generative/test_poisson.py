"""Poisson blending (Yeh et al. 2017 Eq. 6, Vitoria et al. 2018 Eq. 9) against exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generative.gan.poisson import poisson_blend, poisson_blend_numpy

H = W = 12
ROWS, COLS = np.mgrid[0:H, 0:W].astype(np.float64)


def _interior_hole() -> np.ndarray:
    mask = np.ones((H, W))
    mask[3:9, 2:10] = 0
    mask[5, 1] = 0  # a ragged edge
    return mask


def _border_hole() -> np.ndarray:
    mask = np.ones((H, W))
    mask[0:5, 4:12] = 0  # touches the top and right image borders
    mask[7:10, 0:3] = 0  # a second component touching the left border
    return mask


@pytest.mark.parametrize("mask", [_interior_hole(), _border_hole()], ids=["interior", "border"])
def test_a_constant_shift_of_the_guide_is_kept_exactly(mask):
    # y = g + c on the observed pixels: the gradients of g and the boundary agree, so x = g + c
    rng = np.random.default_rng(0)
    guide = rng.random((2, H, W))
    observed = guide + np.array([0.3, -0.2])[:, None, None]
    out = poisson_blend_numpy(guide, observed, mask)
    np.testing.assert_allclose(out, observed, atol=1e-10)


def test_quadratic_with_the_same_laplacian_is_recovered():
    # u = r² + c² has discrete Laplacian 4 everywhere; the guide g = u + 3r − 2c has the same
    # Laplacian but other boundary values, so the solution with y = u on the boundary is u itself
    u = ROWS**2 + COLS**2
    guide = u + 3 * ROWS - 2 * COLS
    mask = _interior_hole()
    out = poisson_blend_numpy(guide[None], u, mask)[0]
    np.testing.assert_allclose(out, u, atol=1e-9)
    # and the guide's Laplacian matters: a flat guide gives the harmonic fill, not u
    flat = poisson_blend_numpy(np.zeros((1, H, W)), u, mask)[0]
    assert np.abs(flat - u)[mask == 0].max() > 0.5


def test_harmonic_boundary_with_a_flat_guide():
    u = ROWS**2 - COLS**2 + 2 * ROWS * COLS  # discrete Laplacian 2 - 2 + 0 = 0
    out = poisson_blend_numpy(np.zeros((1, H, W)), u, _interior_hole())[0]
    np.testing.assert_allclose(out, u, atol=1e-9)


def _dense_least_squares(guide: np.ndarray, observed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Eq. 6 written out: minimise Σ over 4-neighbour pairs ((x_p − x_q) − (g_p − g_q))², x = y on M."""
    hole = np.flatnonzero(mask.ravel() == 0)
    col = {p: i for i, p in enumerate(hole)}
    x_known = np.where(mask > 0, observed, 0).ravel()
    g = guide.ravel()
    rows, rhs = [], []
    for r in range(H):
        for c in range(W):
            for dr, dc in ((1, 0), (0, 1)):
                r2, c2 = r + dr, c + dc
                if r2 >= H or c2 >= W:
                    continue
                p, q = r * W + c, r2 * W + c2
                if p not in col and q not in col:
                    continue
                row = np.zeros(len(hole))
                b = g[p] - g[q]
                if p in col:
                    row[col[p]] += 1
                else:
                    b -= x_known[p]
                if q in col:
                    row[col[q]] -= 1
                else:
                    b += x_known[q]
                rows.append(row)
                rhs.append(b)
    sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    out = x_known.copy()
    out[hole] = sol
    return out.reshape(H, W)


def test_equals_a_dense_least_squares_solve_with_holes_at_the_border():
    rng = np.random.default_rng(1)
    guide, observed = rng.random((H, W)), rng.random((H, W))
    mask = _border_hole()
    expected = _dense_least_squares(guide, observed, mask)
    out = poisson_blend_numpy(guide[None], observed, mask)[0]
    np.testing.assert_allclose(out, expected, atol=1e-9)


def test_nothing_observed_keeps_the_guide_and_everything_observed_keeps_y():
    rng = np.random.default_rng(2)
    guide, observed = rng.random((3, H, W)), rng.random((H, W))
    np.testing.assert_array_equal(poisson_blend_numpy(guide, observed, np.zeros((H, W))), guide)
    np.testing.assert_array_equal(
        poisson_blend_numpy(guide, observed, np.ones((H, W))), np.stack([observed] * 3)
    )


def test_tensor_api_is_batched_and_keeps_observed_pixels():
    g = torch.Generator().manual_seed(0)
    guide = torch.rand(3, 2, 1, H, W, generator=g)
    observed = torch.rand(2, 1, H, W, generator=g)
    mask = torch.from_numpy(np.stack([_interior_hole(), _border_hole()])[:, None]).float()
    out = poisson_blend(guide, observed, mask)
    assert out.shape == guide.shape and out.dtype == guide.dtype
    keep = mask.bool().expand_as(out)
    assert torch.equal(out[keep], observed.expand_as(out)[keep])
    one = poisson_blend_numpy(
        guide[1:2, 1, 0].double().numpy(), observed[1, 0].double().numpy(), mask[1, 0].numpy()
    )
    np.testing.assert_allclose(out[1, 1, 0].numpy(), one[0], atol=1e-6)
