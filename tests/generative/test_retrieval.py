"""Retrieval importance sampling: likelihoods, proposals, weights and the exact EIG in the toy world."""

from __future__ import annotations

import math

import pytest
import torch

from boed.eig import expected_information_gain, resolve_target
from boed.scanner import CandidateGrid
from datasets.labels import LABELS
from generative.errors import SamplerError
from generative.registry import build_sampler
from generative.retrieval import (
    build,
    build_index,
    kish_ess,
    log_likelihoods,
    marginal,
    shifted,
    shifts,
)
from tests.boed.toys import BayesClassifier, ToyWorld, exact_mutual_information

SIZE = 16


def _smooth_images(n: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def _sampler(tmp_path, images, name="idx", build_opts=None, **kw):
    path = build_index(images, tmp_path / name, **(build_opts or {}))
    return build(path, **kw)


def _square_mask(b=1, size=SIZE, r=(3, 11), c=(4, 12)):
    m = torch.zeros(b, 1, size, size)
    m[:, :, r[0] : r[1], c[0] : c[1]] = 1
    return m


# -- likelihoods ---------------------------------------------------------------------------------------
def test_log_likelihood_matches_a_direct_loop():
    cands = _smooth_images(5, seed=1)
    obs = _smooth_images(2, seed=2)
    mask = _square_mask(2)
    mask[1, :, 0:2, :] = 1
    sigma, shift = 0.2, 1
    ll = log_likelihoods(cands, obs * mask, mask, sigma, shift)
    assert ll.shape == (5, 2, 9)
    for j in range(5):
        for b in range(2):
            for t, d in enumerate(shifts(shift)):
                c = shifted(cands[j : j + 1], d, shift)[0]
                want = -0.5 * (((obs[b] - c) ** 2) * mask[b]).sum() / sigma**2
                assert math.isclose(float(ll[j, b, t]), float(want), rel_tol=1e-5, abs_tol=1e-5)


def test_shifted_moves_content_and_replicates_edges():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    s = shifted(x, (1, -1), 1)  # down one, left one
    assert s[0, 0, 1, 0] == x[0, 0, 0, 1] and s[0, 0, 3, 2] == x[0, 0, 2, 3]
    assert s[0, 0, 0, 0] == x[0, 0, 0, 1]  # top row replicated
    assert torch.equal(shifted(x, (0, 0), 2), x)
    assert shifts(1)[4] == (0, 0) and len(shifts(2)) == 25


def test_marginal_is_the_mean_likelihood_over_shifts():
    ll = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    assert math.isclose(float(marginal(ll)), math.log(2.0))


def test_kish_ess_known_values():
    assert torch.allclose(kish_ess(torch.zeros(4, 1)), torch.tensor([4.0]))
    lw = torch.tensor([[0.0], [-1e9], [-1e9]])
    assert torch.allclose(kish_ess(lw), torch.tensor([1.0]))
    w = torch.tensor([0.5, 0.3, 0.2])
    assert math.isclose(float(kish_ess(w.log()[:, None])), 1 / float((w * w).sum()), rel_tol=1e-5)


# -- the sampler -----------------------------------------------------------------------------------------
def test_shift_marginalisation_finds_a_shifted_training_image(tmp_path):
    images = _smooth_images(12, seed=3)
    truth = shifted(images[7:8], (2, -1), 2)  # entry 7 moved by (2, -1)
    mask = _square_mask()
    no_shift = _sampler(tmp_path, images, "a", noise_std=0.02, proposal="exact")
    with_shift = _sampler(tmp_path, images, "b", build_opts={"shift": 2}, noise_std=0.02, proposal="exact")
    post0 = torch.softmax(no_shift._log_proposal(truth * mask, mask)[:, 0], 0)
    post2 = torch.softmax(with_shift._log_proposal(truth * mask, mask)[:, 0], 0)
    assert post2[7] > 0.99 and post0[7] < 0.5
    out = with_shift.sample(truth * mask, mask, 5, generator=torch.Generator().manual_seed(0))
    # every draw is entry 7 moved by the true shift: it equals the truth everywhere
    torch.testing.assert_close(out.images, truth.expand(5, 1, 1, SIZE, SIZE), atol=2e-3, rtol=0)


@pytest.mark.parametrize("proposal,build_opts", [("prior", {}), ("pca", {"pca": 6}), ("exact", {})])
def test_weighted_draws_estimate_the_posterior_mean(tmp_path, proposal, build_opts):
    # the self-normalised weighted mean of many draws converges to the exact posterior mean
    images = _smooth_images(30, seed=4)
    mask = _square_mask(r=(4, 8), c=(4, 8))
    obs = images[:1] * mask
    s = _sampler(tmp_path, images, proposal, build_opts=build_opts, noise_std=0.15, proposal=proposal)
    post = torch.softmax(s.log_prior + marginal(log_likelihoods(s.images.float(), obs, mask, 0.15))[:, 0], 0)
    want = (post[:, None, None, None].float() * s.images.float()).sum(0)
    want = torch.where(mask[0] > 0, obs[0], want)
    out = s.sample(obs, mask, 2000, generator=torch.Generator().manual_seed(1))
    w = torch.softmax(out.log_weights[:, 0], 0)
    got = (w[:, None, None, None] * out.images[:, 0]).sum(0)
    torch.testing.assert_close(got, want, atol=0.02, rtol=0)
    assert out.info["ess"].shape == (1,) and 1 <= float(out.info["ess"][0]) <= 2000
    assert math.isclose(float(torch.logsumexp(out.log_weights[:, 0], 0)), 0.0, abs_tol=1e-5)


def test_pca_proposal_is_the_likelihood_of_the_reconstructions(tmp_path):
    images = _smooth_images(20, seed=5)
    s = _sampler(tmp_path, images, build_opts={"pca": 4}, noise_std=0.1)
    mask = _square_mask(2)
    obs = _smooth_images(2, seed=6) * mask
    p = s.pca
    recon = (p["pca_mean"] + p["pca_codes"] @ p["pca_basis"]).reshape(-1, 1, SIZE, SIZE)
    var = 0.1**2 + float(p["pca_residual"])
    direct = log_likelihoods(recon, obs, mask, math.sqrt(var))[..., 0]  # (M, B)
    torch.testing.assert_close(s._pca_log_likelihood(obs, mask), direct, atol=1e-6, rtol=1e-6)


def test_info_ess_and_distinct(tmp_path):
    images = _smooth_images(16, seed=7)
    s = _sampler(tmp_path, images, noise_std=0.05, proposal="prior")
    mask = _square_mask(2)
    out = s.sample(images[:2] * mask, mask, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.info["ess"], kish_ess(out.log_weights))
    assert out.info["distinct"].shape == (2,) and (out.info["distinct"] <= 10).all()
    # nothing observed: the prior proposal's weights are uniform, ESS = n
    empty = torch.zeros_like(mask)
    flat = s.sample(torch.zeros_like(images[:2]), empty, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(flat.info["ess"], torch.full((2,), 10.0))


def test_ess_falls_as_more_is_observed(tmp_path):
    images = _smooth_images(200, seed=8)
    s = _sampler(tmp_path, images, noise_std=0.5, proposal="prior")
    truth = _smooth_images(1, seed=9)
    ess = []
    for k in (1, 4, 16):
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[..., :k, :] = 1
        out = s.sample(truth * mask, mask, 200, generator=torch.Generator().manual_seed(0))
        ess.append(float(out.info["ess"][0]))
    assert ess[0] > ess[1] > ess[2]


# -- the exact EIG in the toy world -------------------------------------------------------------------------
class TotalBayes(BayesClassifier):
    """The toy's Bayes classifier, 0.5 for views no state of the world can produce (it gives NaN).

    The exhaustive proposal returns inconsistent database entries too (with weight exactly 0 in
    float64); pasting the observation into them can make such impossible views.
    """

    def predict(self, observed, mask):
        return torch.nan_to_num(super().predict(observed, mask), nan=0.5)


CASES = [(0, [], "any"), (0, [0], "any"), (2, [2], "all"), (4, [0, 8], "any")]


@pytest.mark.parametrize("seed,scanned,target", CASES)
def test_exhaustive_database_gives_the_exact_eig(tmp_path, seed, scanned, target):
    # a database holding every state of the discrete world once with its prior mass: the weighted
    # retrieval completions make Eq. 17 the exact mutual information
    world = ToyWorld(seed=seed)
    grid = CandidateGrid.from_grid(world.size, world.patch, grid=3)
    image = world.images[1:2]
    mask = torch.zeros_like(image)
    for c in scanned:
        mask = torch.maximum(mask, grid.masks[c : c + 1])
    path = build_index(world.images, tmp_path / "toy", log_prior=world.prior.log(), noise_std=0.01)
    s = build_sampler("retrieval", path, proposal="exhaustive")
    comps = s.sample(image * mask, mask, len(world.images))
    # the weights are the exact posterior over the states (0 for those the observation excludes)
    post = world.consistent(image[0] * mask[0], mask[0])
    torch.testing.assert_close(torch.softmax(comps.log_weights.double()[:, 0], 0), post, atol=1e-6, rtol=0)
    eig, _ = expected_information_gain(TotalBayes(world), image * mask, mask, comps, grid, target)
    idx = list(resolve_target(target, LABELS).indices)
    truth = exact_mutual_information(world, image * mask, mask, grid.masks, idx)
    torch.testing.assert_close(eig, truth, atol=1e-5, rtol=0)
    assert truth.max() > 0.05


def test_sampled_retrieval_converges_to_the_exact_eig(tmp_path):
    world = ToyWorld(seed=0)
    grid = CandidateGrid.from_grid(world.size, world.patch, grid=3)
    image = world.images[1:2]
    mask = grid.masks[0:1]
    path = build_index(world.images, tmp_path / "toy", log_prior=world.prior.log(), noise_std=0.01)
    s = build_sampler("retrieval", path)  # default: the prior proposal, likelihood weights
    comps = s.sample(image * mask, mask, 2000, generator=torch.Generator().manual_seed(0))
    eig, _ = expected_information_gain(TotalBayes(world), image * mask, mask, comps, grid, "any")
    truth = exact_mutual_information(
        world, image * mask, mask, grid.masks, list(resolve_target("any", LABELS).indices)
    )
    torch.testing.assert_close(eig, truth, atol=0.03, rtol=0)


# -- errors -------------------------------------------------------------------------------------------
def test_exhaustive_needs_n_equal_to_the_database(tmp_path):
    s = _sampler(tmp_path, _smooth_images(6), proposal="exhaustive")
    mask = _square_mask()
    with pytest.raises(SamplerError, match="n must be 6"):
        s.sample(torch.zeros(1, 1, SIZE, SIZE), mask, 5)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"pca": 0}, "--pca"),
        ({"pca": 10_000}, "--pca"),
        ({"noise_std": 0.0}, "--noise-std"),
        ({"noise_std": float("nan")}, "--noise-std"),
        ({"shift": -1}, "--shift"),
        ({"shift": SIZE}, "--shift"),
        ({"log_prior": torch.zeros(3)}, "log_prior"),
    ],
)
def test_bad_index_options(tmp_path, kw, match):
    with pytest.raises(SamplerError, match=match):
        build_index(_smooth_images(6), tmp_path / "bad", **kw)


def test_bad_images_are_refused(tmp_path):
    with pytest.raises(SamplerError, match="in \\[0, 1\\]"):
        build_index(_smooth_images(4) * 2, tmp_path / "x")
    with pytest.raises(SamplerError, match="\\(M, 1, S, S\\)"):
        build_index(torch.rand(4, 3, 8, 8), tmp_path / "x")


def test_bad_sampler_options_and_files(tmp_path):
    path = build_index(_smooth_images(6), tmp_path / "idx")
    with pytest.raises(SamplerError, match="proposal 'pca' needs"):
        build(path, proposal="pca")
    with pytest.raises(SamplerError, match="proposal must be"):
        build(path, proposal="magic")
    with pytest.raises(SamplerError, match="noise_std"):
        build(path, noise_std=-1)
    with pytest.raises(SamplerError, match="no option"):
        build(path, temperature=0.5)
    from generative.fills import build_mean_image

    other = build_mean_image(_smooth_images(3), tmp_path / "mean")
    with pytest.raises(SamplerError, match="not a retrieval index"):
        build(other)


def test_index_records_its_settings_and_data(tmp_path):
    path = build_index(
        _smooth_images(8), tmp_path / "idx", pca=3, shift=1, noise_std=0.2, data={"train": {"n": 8}}
    )
    s = build(path)
    assert s.proposal == "pca" and s.shift == 1 and s.noise_std == 0.2
    assert s.meta["config"] == {"image_size": SIZE, "n_images": 8, "pca": 3, "noise_std": 0.2, "shift": 1}
    assert s.meta["data"] == {"train": {"n": 8}} and s.meta["sampler"] == "retrieval"
    assert build(path, shift=0, noise_std=0.5).shift == 0


def test_no_index_says_how_to_build_one():
    with pytest.raises(SamplerError, match="boed build-retrieval-index"):
        build_sampler("retrieval")
