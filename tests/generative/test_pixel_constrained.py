"""Pixel Constrained CNN and the Conditional PixelCNN: causality, exact sampling, Eq. 4, masks, sampler."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from generative.autoregressive import dequantise, log_likelihood, quantise
from generative.errors import SamplerError
from generative.pixel_constrained import (
    FAMILY,
    PRESETS,
    GatedPixelCNN,
    PixelConstrainedCNN,
    ground_truth_rank,
    likelihood_ranks,
    pixel_probability_maps,
    rectangle_hole_masks,
    training_masks,
)

from .causality import assert_causal, missing_dependencies, receptive_field_covers_past

SMALL = dict(levels=4, prior_channels=6, prior_layers=2, prior_kernel=3, cond_channels=6, cond_blocks=2)


def small_model(model: str = "pixel-constrained", seed: int = 0, **changes) -> PixelConstrainedCNN:
    torch.manual_seed(seed)
    config = dataclasses.replace(PRESETS["tiny"], model=model, **(SMALL | changes))
    return PixelConstrainedCNN(config).double().eval()


def inputs(b: int = 2, h: int = 7, w: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, 1, h, w, generator=g) < 0.4).double()
    mask[:, :, 0] = 1  # a row observed in every image: skipped, its vertical stack still computed
    mask[0, :, 3] = 1  # a row observed in one image only
    return x, mask


# -- the prior: causality and no blind spot ---------------------------------------------------------------
def _prior(layers: int = 4, kernel: int = 3, cond: int = 0) -> GatedPixelCNN:
    torch.manual_seed(0)
    return GatedPixelCNN(5, layers, kernel, 4, cond_channels=cond).double().eval()


@pytest.mark.parametrize("kernel", [3, 5])
def test_prior_is_causal(kernel):
    net = _prior(kernel=kernel)
    assert_causal(lambda x: net(x.double()), (2, 1, 6, 7))


def test_conditional_prior_is_causal_in_the_image():
    net = _prior(cond=3)
    s = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_causal(lambda x: net(x.double(), s.repeat(len(x) // 2, 1, 1, 1)), (2, 1, 6, 7))


def test_restricted_block_that_sees_its_own_pixel_is_caught():
    net = _prior()
    net.h_convs[0] = nn.Conv2d(1, 10, (1, 2)).double()  # columns j-1 .. j: includes the pixel itself
    with pytest.raises(AssertionError, match="not causal"):
        assert_causal(lambda x: net(x.double()), (1, 1, 5, 5))


def test_no_blind_spot():
    net = _prior(layers=5)
    fn = lambda x: net(x.double())  # noqa: E731
    assert receptive_field_covers_past(fn, (1, 1, 6, 6))
    assert receptive_field_covers_past(fn, (1, 1, 6, 6), pixel=(5, 2))  # the masked-conv blind spot region
    # cut the vertical-to-horizontal links: the rows above vanish from the receptive field
    for link in net.links:
        nn.init.zeros_(link.weight)
        nn.init.zeros_(link.bias)
    missing = missing_dependencies(fn, (1, 1, 6, 6))
    assert missing and all(r < 5 for r, _ in missing)


# -- exact sampling: fast == straightforward, likelihoods exact -------------------------------------------
@pytest.mark.parametrize("model", ["pixel-constrained", "conditional-pixelcnn"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fast_and_raster_give_identical_samples_and_likelihoods(model, temperature):
    net = small_model(model)
    x, mask = inputs()
    runs = {
        method: net.sample(
            x * mask,
            mask,
            3,
            temperature=temperature,
            generator=torch.Generator().manual_seed(5),
            method=method,
        )
        for method in ("fast", "raster")
    }
    (fast, ll_fast), (slow, ll_slow) = runs["fast"], runs["raster"]
    assert torch.equal(fast, slow)
    assert torch.allclose(ll_fast, ll_slow, atol=1e-6)
    assert not torch.equal(fast[0], fast[1])  # the draws differ


@pytest.mark.parametrize("model", ["pixel-constrained", "conditional-pixelcnn"])
def test_sampled_likelihood_equals_one_full_pass(model):
    # the likelihood summed while sampling is log p(x_missing | c) of the completion (Eq. 2)
    net = small_model(model)
    x, mask = inputs()
    images, log_lik = net.sample(x * mask, mask, 2, generator=torch.Generator().manual_seed(0))
    for k in range(2):
        assert torch.allclose(net.log_prob(images[k], mask).float(), log_lik[k], atol=1e-4)
    observed = dequantise(quantise(x, 4), 4)
    assert torch.equal(images[:, mask.bool()], observed[mask.bool()].expand(2, -1).to(images.dtype))


def test_completions_are_draws_from_the_model():
    # one missing pixel: the frequency of each level matches the model's softmax
    net = small_model(levels=3)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(x)
    mask[0, 0, 2, 1] = 0
    logits, _ = net.logits(net.quantised(x), mask)
    probs = torch.softmax(logits[0, :, 2, 1], 0)
    images, log_lik = net.sample(x * mask, mask, 4000, generator=torch.Generator().manual_seed(0))
    levels = quantise(images[:, 0, 0, 2, 1], 3)
    freq = torch.bincount(levels, minlength=3).double() / 4000
    assert torch.allclose(freq, probs, atol=0.03)
    assert torch.allclose(log_lik[:, 0].double(), probs.log()[levels], atol=1e-5)


# -- the loss (Eq. 4) ---------------------------------------------------------------------------------------
def test_loss_is_eq4_over_missing_pixels():
    net = small_model(alpha=0.5)
    x, mask = inputs()
    stats = net.losses(x, mask)
    q = quantise(x, 4)
    logits, cond = net.logits(dequantise(q, 4).double(), mask)
    missing = mask < 0.5
    count = missing.sum()
    nll = -log_likelihood(logits, q, missing).sum() / count
    cond_nll = -log_likelihood(cond, q, missing).sum() / count
    assert torch.allclose(stats["loss"], nll + 0.5 * cond_nll)
    assert torch.allclose(stats["bpd"], nll / math.log(2))
    assert torch.allclose(stats["cond_bpd"], cond_nll / math.log(2))
    # alpha = 0 is Eq. 3 alone
    net0 = small_model(alpha=0.0)
    assert torch.allclose(net0.losses(x, mask)["loss"], net0.losses(x, mask)["bpd"] * math.log(2))


def test_observed_pixels_enter_only_as_conditioning():
    net = small_model()
    x, mask = inputs()
    full = torch.ones_like(mask)
    assert net.losses(x, full)["loss"].item() == 0.0  # nothing missing: nothing to predict
    stats = net.losses(x, mask)
    assert stats["loss"].requires_grad
    stats["loss"].backward()
    assert all(p.grad is not None for p in net.conditioning.parameters())


def test_conditional_pixelcnn_has_no_conditional_logits():
    net = small_model("conditional-pixelcnn")
    x, mask = inputs()
    logits, cond = net.logits(net.quantised(x), mask)
    assert cond is None and logits.shape == (2, 4, 7, 9)
    stats = net.losses(x, mask)
    assert "cond_bpd" not in stats and torch.allclose(stats["loss"], stats["bpd"] * math.log(2))


def test_bad_config_is_a_sampler_error():
    with pytest.raises(SamplerError, match="prior_kernel"):
        small_model(prior_kernel=4)
    with pytest.raises(SamplerError, match="levels"):
        small_model(levels=1)
    with pytest.raises(SamplerError, match="model"):
        small_model("pixelcnn++")


# -- masks ------------------------------------------------------------------------------------------------
def test_rectangle_holes():
    masks = rectangle_hole_masks(50, 32, torch.Generator().manual_seed(0))
    hidden = 1 - masks[:, 0]
    rows, cols = hidden.amax(2).sum(1), hidden.amax(1).sum(1)
    assert torch.equal(hidden.sum((1, 2)), rows * cols)  # one rectangle
    assert rows.min() >= 8 and rows.max() <= 24 and cols.min() >= 8 and cols.max() <= 24


def test_training_masks_mix_the_types_and_are_seeded():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    masks = training_masks(400, 32, g())
    assert masks.shape == (400, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks, training_masks(400, 32, g()))
    frac = masks.mean((1, 2, 3))
    assert (frac < 0.5).sum() > 50 and (frac > 0.5).sum() > 50  # mostly-hidden and mostly-observed masks
    only_blobs = training_masks(200, 32, g(), blob_fraction=1.0)
    hidden = 1 - only_blobs[:, 0]
    not_rect = hidden.sum((1, 2)) != hidden.amax(2).sum(1) * hidden.amax(1).sum(1)
    assert not_rect.float().mean() > 0.8  # blobs are irregular


# -- likelihood ranks -------------------------------------------------------------------------------------
def test_likelihood_ranks_known_answer():
    log_lik = torch.tensor([[-3.0, -1.0], [-1.0, -2.0], [-2.0, -0.5]])
    assert likelihood_ranks(log_lik).tolist() == [[3, 2], [1, 3], [2, 1]]


def test_ground_truth_rank_counts_more_likely_completions():
    net = small_model()
    x, mask = inputs()
    truth = net.log_prob(x, mask).float()
    log_lik = torch.stack([truth - 1, truth + 1, truth + 2, truth - 5])  # (4, B)
    assert ground_truth_rank(net, x, mask, log_lik).tolist() == [3, 3]


# -- pixel probability maps (Fig. 11) ---------------------------------------------------------------------
def test_pixel_probability_maps():
    net = small_model(levels=2)
    x, mask = inputs(1)
    maps, final = pixel_probability_maps(net, x * mask, mask, fractions=(0.0, 0.5, 1.0),
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert maps.shape == (3, 1, 1, 7, 9) and final.shape == (1, 1, 7, 9)
    start = torch.where(mask.bool(), net.quantised(x), torch.zeros_like(x))
    logits, _ = net.logits(start, mask)
    p_one = torch.softmax(logits, 1)[:, 1:2]
    expect = torch.where(mask.bool(), start, p_one).float()
    assert torch.allclose(maps[0], expect, atol=1e-6)  # before any draw: the model's p(x_i = 1)
    assert not torch.allclose(maps[0], maps[1])
    assert torch.equal(maps[:, mask.bool()], start[mask.bool()].float().expand(3, -1))


# -- the sampler ------------------------------------------------------------------------------------------
def _sampler(name: str, tmp_path, **options):
    from generative.registry import build_sampler, untrained_checkpoint

    ckpt = untrained_checkpoint(name, tmp_path / name, preset="tiny", prior_layers=0, cond_blocks=1)
    return build_sampler(name, ckpt, preset="tiny", **options)


def test_sampler_reports_likelihoods_ranks_and_sorts(tmp_path):
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[:, :, 20:26, 5:30] = 0
    plain = _sampler("pixel-constrained", tmp_path).sample(
        x, mask, 4, generator=torch.Generator().manual_seed(1)
    )
    ranked = _sampler("pixel-constrained", tmp_path, sort_by_likelihood=True).sample(
        x, mask, 4, generator=torch.Generator().manual_seed(1)
    )
    ll, rank = plain.info["log_likelihood"], plain.info["rank"]
    assert ll.shape == rank.shape == (4, 2) and plain.log_weights is None
    assert torch.equal(torch.sort(rank, 0).values, torch.arange(1, 5)[:, None].expand(4, 2))
    assert torch.equal(ranked.info["log_likelihood"], torch.sort(ll, 0, descending=True).values)
    assert torch.equal(ranked.info["rank"], torch.arange(1, 5)[:, None].expand(4, 2))
    best = rank.argmin(0)
    assert torch.equal(ranked.images[0, 1], plain.images[best[1], 1])


@pytest.mark.parametrize(
    "options,match",
    [({"temperature": 0.0}, "temperature"), ({"method": "slow"}, "method"), ({"steps": 3}, "no option")],
)
def test_bad_sampler_options(tmp_path, options, match):
    with pytest.raises(SamplerError, match=match):
        _sampler("pixel-constrained", tmp_path, **options)


def test_checkpoint_kinds_are_not_mixed(tmp_path):
    from generative.registry import build_sampler, untrained_checkpoint

    ckpt = untrained_checkpoint("conditional-pixelcnn", tmp_path / "c", preset="tiny")
    with pytest.raises(SamplerError, match="conditional-pixelcnn"):
        build_sampler("pixel-constrained", ckpt, preset="tiny")
    assert (
        FAMILY.kind(FAMILY.for_name(FAMILY.config("tiny"), "conditional-pixelcnn"), "x")
        == "conditional-pixelcnn"
    )


# -- the shipped checkpoint -------------------------------------------------------------------------------
def _shipped():
    from boed.runtime.checkpoints import checkpoint_paths
    from generative.registry import shipped_checkpoint

    path = shipped_checkpoint("cpu", "pixel-constrained")  # ships with the package: its absence fails
    assert checkpoint_paths(path)[1].is_file(), f"{path}: the shipped weights are missing"
    return path, checkpoint_paths(path)


def test_shipped_checkpoint_is_small_and_described():
    from boed.runtime.checkpoints import read_meta

    path, (weights, _) = _shipped()
    assert weights.stat().st_size <= 4 * 2**20
    meta = read_meta(path)
    assert meta["sampler"] == "pixel-constrained" and meta["image_size"] == 64
    assert meta["data"]["train"]["source"] == "phantoms"
    assert "train-sampler" in meta["training"]["command"]
    assert meta["metrics"]["val_bpd"] < 3.0  # 5 bits is a uniform guess over 32 levels


def test_shipped_sampler_completes_a_phantom():
    from datasets.phantoms import generate_phantoms
    from generative.registry import build_sampler

    _shipped()
    sampler = build_sampler("pixel-constrained")
    x = generate_phantoms(1, 64, seed=5, version="v1").images  # the version it was trained on
    mask = torch.ones_like(x)
    mask[..., 30:34, 10:54] = 0  # a thin strip: few pixels to draw
    out = sampler.sample(x * mask, mask, 2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 1, 1, 64, 64) and out.info["log_likelihood"].shape == (2, 1)
    assert torch.equal(out.images[mask.bool().expand(2, 1, 1, 64, 64)], x[mask.bool()].repeat(2))
    assert (out.images - x).abs().sum() / (2 * (1 - mask).sum()) < 0.2  # an untrained model: ~0.35
