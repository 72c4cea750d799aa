"""Known answers for boed.evaluation.metrics: Fréchet distance, KID, inception score, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from boed.evaluation import metrics as M


def _gaussian(n, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mean), generator=g, dtype=torch.float64) * torch.tensor(std) + torch.tensor(
        mean
    )


def _frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """An independent implementation: scipy.linalg.sqrtm of the sample covariances."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_frechet_of_identical_sets_is_zero():
    x = _gaussian(200, [0.0, 1.0, -2.0, 0.5], [1.0, 2.0, 0.5, 1.0], 0)
    assert M.frechet_distance(x, x.clone()) == pytest.approx(0.0, abs=1e-6)


def test_frechet_of_two_gaussians_matches_closed_form():
    # diagonal covariances: d² = |μ1 − μ2|² + Σ (σ1 − σ2)²
    m1, s1, m2, s2 = [0.0, 1.0, 2.0], [1.0, 2.0, 0.5], [1.0, -1.0, 2.0], [2.0, 1.0, 0.5]
    closed = sum((a - b) ** 2 for a, b in zip(m1, m2, strict=True)) + sum(
        (a - b) ** 2 for a, b in zip(s1, s2, strict=True)
    )
    x, y = _gaussian(40000, m1, s1, 1), _gaussian(40000, m2, s2, 2)
    assert closed == pytest.approx(7.0)
    assert M.frechet_distance(x, y) == pytest.approx(closed, rel=0.03)


def test_frechet_agrees_with_scipy_sqrtm_on_correlated_features():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(
        5, 5, generator=g, dtype=torch.float64
    )
    b = (
        torch.randn(250, 5, generator=g, dtype=torch.float64)
        @ torch.randn(5, 5, generator=g, dtype=torch.float64)
        + 0.3
    )
    assert M.frechet_distance(a, b) == pytest.approx(_frechet_scipy(a.numpy(), b.numpy()), rel=1e-6)


def _kid_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b / d + 1)³ (Bińkowski et al. 2018, Eq. 4), all samples."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_kid_is_the_unbiased_estimator_on_small_sets():
    x, y = _gaussian(12, [0.0, 0.0], [1.0, 1.0], 4), _gaussian(12, [0.5, 0.0], [1.0, 1.0], 5)
    kid, std = M.kernel_distance(x, y, subsets=3, subset_size=12)  # each subset = every sample
    assert kid == pytest.approx(_kid_by_hand(x.numpy(), y.numpy()), rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_unbiased_near_zero_for_one_distribution():
    # same distribution, n = 20: the biased MMD² is > 0 by ~O(1/n); the unbiased one averages ~0
    values = [
        M.kernel_distance(
            _gaussian(20, [0.0] * 3, [1.0] * 3, 2 * s),
            _gaussian(20, [0.0] * 3, [1.0] * 3, 2 * s + 1),
            subsets=1,
            subset_size=20,
        )[0]
        for s in range(40)
    ]
    assert abs(np.mean(values)) < 3 * np.std(values) / math.sqrt(len(values))
    assert min(values) < 0  # an unbiased estimator of 0 must go negative


def test_kid_is_reproducible_and_leaves_global_rng_alone():
    x, y = _gaussian(50, [0.0, 0.0], [1.0, 1.0], 6), _gaussian(50, [1.0, 0.0], [1.0, 1.0], 7)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = M.kernel_distance(x, y, subsets=5, subset_size=20, seed=1)
    after = torch.rand(1)
    assert a == M.kernel_distance(x, y, subsets=5, subset_size=20, seed=1)
    assert torch.equal(before, after)


def test_inception_score_by_hand():
    # one input, two completions, one label: p = 0.9 and 0.1, mean 0.5 -> KL = 0.9 ln 1.8 + 0.1 ln 0.2
    probs = torch.tensor([[[0.9]], [[0.1]]])
    kl = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert float(M.inception_score(probs)[0]) == pytest.approx(math.exp(kl), rel=1e-5)
    same = torch.full((4, 3, 2), 0.7)
    assert torch.allclose(M.inception_score(same), torch.ones(3))
    two = torch.tensor([[[0.9, 0.9]], [[0.1, 0.1]]])  # two independent labels: the KLs add
    assert float(M.inception_score(two)[0]) == pytest.approx(math.exp(2 * kl), rel=1e-5)


def test_feature_diversity_by_hand():
    f = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]], [[0.0, 0.0]]])  # (n=3, B=1, F=2)
    # pairs: 5, 0, 5 (each twice over 6 ordered pairs) -> 20 / 6
    assert float(M.feature_diversity(f)[0]) == pytest.approx(20 / 6)
    with pytest.raises(ValueError):
        M.feature_diversity(f[:1])


def test_calibration_ranks_count_samples_below_and_break_ties():
    truth = torch.tensor([0.5, 0.5, 0.0])
    samples = torch.tensor([[0.1, 0.5, 0.2], [0.2, 0.5, 0.3], [0.9, 0.5, 0.4]])  # (n=3, B=3)
    ranks = torch.stack(
        [M.calibration_ranks(truth, samples, torch.Generator().manual_seed(s)) for s in range(400)]
    )
    assert (ranks[:, 0] == 2).all() and (ranks[:, 2] == 0).all()
    tied = ranks[:, 1]  # three ties: uniform over 0..3
    assert set(tied.tolist()) == {0, 1, 2, 3}
    assert abs(float(tied.double().mean()) - 1.5) < 0.2


def test_exchangeable_truth_gives_a_uniform_histogram_and_a_biased_one_does_not():
    g = torch.Generator().manual_seed(0)
    n, b = 9, 4000
    draws = torch.randn(n + 1, b, generator=g)
    calibrated = M.calibration_ranks(draws[0], draws[1:], g)
    counts = M.rank_histogram(calibrated, n)
    assert counts.sum() == b and len(counts) == n + 1
    _, dof, p = M.rank_chi2(counts)
    assert dof == n and p > 0.001
    overdispersed = M.calibration_ranks(draws[0], 0.3 * draws[1:], g)  # too narrow a posterior: U shape
    chi2, _, p_bad = M.rank_chi2(M.rank_histogram(overdispersed, n))
    assert p_bad < 1e-6 and chi2 > 100


def test_rank_chi2_by_hand():
    chi2, dof, p = M.rank_chi2(torch.tensor([10, 0]))  # expected 5, 5: (25 + 25) / 5
    assert (chi2, dof) == (10.0, 1) and p == pytest.approx(0.0015654, rel=1e-3)


def test_posterior_gap_uniform_and_weighted():
    obs = torch.tensor([0.5, 0.2])
    comp = torch.tensor([[0.1, 0.2], [0.7, 0.2]])
    assert torch.allclose(M.posterior_gap(obs, comp), torch.tensor([0.1, 0.0]))
    lw = torch.log(torch.tensor([[0.25, 0.5], [0.75, 0.5]]))
    assert torch.allclose(M.posterior_gap(obs, comp, lw), torch.tensor([0.5 - 0.55, 0.0]))
