"""Realism, diversity and calibration metrics of a sampler's completions (pure functions).

Realism in the classifier's feature space (the project's DenseNet on ``cat([x⊙m, m])`` with the
full mask for a completed image), as Harvey, Naderiparizi & Wood, "Image Completion via Inference
in Deep Generative Models" (2021), §4 and Fig. 3, do it with Inception features:

* :func:`frechet_distance` — the Fréchet distance ``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)``
  between Gaussians fitted to two feature sets (Heusel et al., "GANs trained by a two time-scale
  update rule converge to a local Nash equilibrium", 2017, Eq. 6), computed by torchmetrics'
  ``FrechetInceptionDistance`` with a pass-through feature module (:class:`CachedFeatures`), so
  features computed once per image (and cached per shard by the engine) can be scored after
  merging shards.
* :func:`kernel_distance` — the kernel inception distance (Bińkowski et al., "Demystifying MMD
  GANs", 2018): the unbiased MMD² estimator with the cubic polynomial kernel, by torchmetrics'
  ``KernelInceptionDistance`` (mean and std over random subsets); unbiased, so it is usable (and
  can be negative) at the small n of a CPU run, where the FID is biased upwards.
* :func:`inception_score` — the inception-score analogue of appendix B.3 (Eq. 18) with the
  project's classifier: per input, ``exp E_n KL(p(y | I⁽ⁿ⁾) ‖ p̄(y))`` over its n completions,
  ``p̄`` their mean prediction. The classifier is multi-label (independent sigmoids), so ``y``
  is the vector of binary labels and the KL is the sum of the per-label Bernoulli KLs (exact
  for a product of Bernoullis when ``p̄`` is replaced by the product of its marginals, which is
  what the classifier models); deviation from the paper's softmax classifier, stated here.
* :func:`feature_diversity` — mean pairwise Euclidean distance between the features of the n
  completions of one input (the LPIPS-style diversity of Fig. 3 in the classifier's space).

Calibration of the posterior the EIG (Eq. 17) averages over:

* :func:`calibration_ranks` — the rank of the true image's score (the classifier's target
  probability, a monotone function of its logit, so the same ranks) among the n completions'
  scores, ties broken at random: uniform on ``0..n`` when the truth is exchangeable with the
  completions, i.e. when the sampler draws from the true posterior (the rank histogram of
  Talagrand et al. 1997 / the simulation-based calibration of Talts et al., "Validating Bayesian
  inference algorithms with simulation-based calibration", 2018).
* :func:`rank_chi2` — Pearson's χ² of the histogram against uniform (``scipy.stats.chisquare``).
* :func:`posterior_gap` — ``g(v | x⊙m, m) − Σₙ wₙ g(v | I⁽ⁿ⁾)``: the classifier on the
  observation against its mean over the completions; the two agree for a calibrated classifier
  and a sampler from the true posterior, and the gap is a bias of Eq. 17's estimate.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

EPS = 1e-6


class CachedFeatures(nn.Module):
    """The feature network torchmetrics' FID / KID call: features already computed, passed through.

    ``forward(features (B, F)) -> (B, F)`` in float64.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features (B, {self.num_features}), got {tuple(features.shape)}")
        return features.double()


def _check_pair(real: torch.Tensor, fake: torch.Tensor, least: int) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"feature sets must be (N, F) with one F, got {tuple(real.shape)}, {tuple(fake.shape)}"
        )
    if min(len(real), len(fake)) < least:
        raise ValueError(f"need at least {least} features per set, got {len(real)} and {len(fake)}")


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to ``real`` ``(N, F)`` and ``fake`` ``(M, F)`` (N, M ≥ 2)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_pair(real, fake, 2)
    # sync_on_compute=False: the features are already all of them (under torchrun, rank 0 merged every
    # rank's chunks); torchmetrics would otherwise gather across the process group and wait for ranks
    metric = FrechetInceptionDistance(
        feature=CachedFeatures(real.shape[1]), reset_real_features=True, sync_on_compute=False
    )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute().clamp_min(0.0))


def kernel_distance(
    real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Unbiased KID ``(mean, std)`` over ``subsets`` random subsets of ``min(subset_size, N, M)`` each.

    The subsets are drawn from torch's global generator inside a forked RNG state seeded by
    ``seed`` (torchmetrics draws them with ``torch.randperm``), so the value is reproducible and
    the caller's random state is untouched.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_pair(real, fake, 2)
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": they are already in memory
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=CachedFeatures(real.shape[1]),
            subsets=subsets,
            subset_size=size,
            reset_real_features=True,
            sync_on_compute=False,  # as for the FID
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``KL(Bern(p) ‖ Bern(q))`` elementwise, nats (probabilities clipped to [EPS, 1 − EPS])."""
    p = p.double().clamp(EPS, 1 - EPS)
    q = q.double().clamp(EPS, 1 - EPS)
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def inception_score(probs: torch.Tensor) -> torch.Tensor:
    """Per-input inception-score analogue ``(B,)`` from label probabilities ``(n, B, L)``.

    ``exp(mean_n Σ_l KL(Bern(p_nbl) ‖ Bern(p̄_bl)))`` with ``p̄`` the mean over the n completions;
    1 when all completions get the same prediction, larger the more they differ confidently.
    """
    if probs.dim() != 3:
        raise ValueError(f"probs must be (n, B, L), got {tuple(probs.shape)}")
    mean = probs.double().mean(0, keepdim=True)
    return bernoulli_kl(probs, mean).sum(-1).mean(0).exp().float()


def feature_diversity(features: torch.Tensor) -> torch.Tensor:
    """Mean pairwise Euclidean distance ``(B,)`` between the features ``(n, B, F)`` of n ≥ 2 completions."""
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"diversity needs n >= 2 completions, got {n}")
    f = features.double().transpose(0, 1)  # (B, n, F)
    d = torch.cdist(f, f)  # (B, n, n)
    return (d.sum((1, 2)) / (n * (n - 1))).float()


def calibration_ranks(
    truth: torch.Tensor, samples: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rank ``(B,)`` in ``0..n`` of ``truth`` ``(B,)`` among ``samples`` ``(n, B)``: the number of
    samples below it plus a uniform draw from ``0..ties`` (ties broken at random, so a point-mass
    sampler that is exactly right still gets a uniform histogram only if it is right)."""
    below = (samples < truth[None]).sum(0)
    ties = (samples == truth[None]).sum(0)
    u = torch.rand(truth.shape, generator=generator, dtype=torch.float64)
    return below + torch.floor(u * (ties + 1).double()).long()


def rank_histogram(ranks: torch.Tensor, n: int) -> torch.Tensor:
    """Counts ``(n + 1,)`` of ranks in ``0..n``."""
    ranks = ranks.long().flatten()
    if len(ranks) and (ranks.min() < 0 or ranks.max() > n):
        raise ValueError(f"ranks must lie in 0..{n}")
    return torch.bincount(ranks, minlength=n + 1)


def rank_chi2(counts: torch.Tensor) -> tuple[float, int, float]:
    """Pearson's χ² of rank ``counts`` ``(n + 1,)`` against uniform: ``(statistic, dof, p value)``."""
    from scipy.stats import chisquare

    counts = counts.double().numpy()
    if counts.sum() == 0:
        return math.nan, len(counts) - 1, math.nan
    result = chisquare(counts)
    return float(result.statistic), len(counts) - 1, float(result.pvalue)


def posterior_gap(
    observed: torch.Tensor, completions: torch.Tensor, log_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``g(v | x⊙m) − Σₙ wₙ g(v | I⁽ⁿ⁾)`` ``(B,)``: ``observed`` ``(B,)``, ``completions`` ``(n, B)``
    probabilities; ``w`` the self-normalised ``log_weights`` ``(n, B)`` (uniform when None)."""
    if log_weights is None:
        mean = completions.double().mean(0)
    else:
        mean = (torch.softmax(log_weights.double(), 0) * completions.double()).sum(0)
    return (observed.double() - mean).float()
