"""Local PixelCNN (Burlin et al. 2017, §6.2): masks, causality, the window, the cached sampler."""

from __future__ import annotations

import pytest
import torch

from generative.autoregressive import log_likelihood, quantise
from generative.pixelcnn_local import FAMILY, CausalConv2d, PixelCNNLocal
from tests.generative.causality import assert_causal, causality_violations, missing_dependencies

SIZE = 12


def _model(**changes) -> PixelCNNLocal:
    torch.manual_seed(0)
    return FAMILY.build_model(FAMILY.config("tiny", image_size=SIZE, **changes)).eval()


@pytest.mark.parametrize("mask,kept_in_row", [("A", 2), ("B", 3)])
def test_causal_conv_masks(mask, kept_in_row):
    conv = CausalConv2d(1, 1, up=1, left=2, right=1, mask=mask)
    assert conv.mask.shape[-2:] == (2, 4)  # rows below the pixel are not allocated
    assert conv.mask[0, 0, 0].tolist() == [1, 1, 1, 1]  # the row above: all of it
    assert int(conv.mask[0, 0, 1].sum()) == kept_in_row  # own row: left of (A) / up to (B) the pixel


def test_paper_zone_is_24_pixels():
    cfg = FAMILY.config("cpu")
    conv = CausalConv2d(1, 1, up=cfg.window_up, left=cfg.window_left, right=cfg.window_right, mask="A")
    assert int(conv.mask.sum()) == 24  # §6.2: the 5×5 zone at the top left, the pixel excluded


def test_logits_are_causal():
    model = _model(layers=2)
    assert_causal(model.logits, (1, 1, SIZE, SIZE))


def test_mask_b_in_the_first_layer_is_caught():
    model = _model(layers=2)
    model.zone.mask[:, :, model.zone.up, model.zone.left] = 1  # the pixel sees itself
    found = causality_violations(model.logits, (1, 1, SIZE, SIZE))
    assert found and all(p == q for p, q, _ in found)  # exactly the self-dependence


def test_receptive_field_is_the_window():
    model = _model(layers=2)
    up, left, right = model.window
    assert (up, left, right) == (4 + 2, 4 + 2, 0 + 2)
    r, c = SIZE - 1, SIZE // 2
    missing = set(missing_dependencies(model.logits, (1, 1, SIZE, SIZE), pixel=(r, c)))
    earlier = {(i, j) for i in range(SIZE) for j in range(SIZE) if i * SIZE + j < r * SIZE + c}
    # inside the window: every pixel the masks allow matters; outside: none does
    outside = {(i, j) for i, j in earlier if i < r - up or j < c - left or j > c + right}
    assert outside <= missing
    assert (r, c - 1) not in missing and (r - up, c - left) not in missing


@pytest.mark.parametrize("rows", [slice(0, 5), slice(3, 12)])
def test_cached_sampler_draws_what_the_reference_draws(rows):
    model = _model(layers=2)
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(x)
    mask[:, :, rows] = 1
    mask[1, :, :, :4] = 1
    with torch.no_grad():
        ref, ll_ref = model.sample_reference(x, mask, 3, generator=torch.Generator().manual_seed(2))
        fast, ll = model.sample_cached(x, mask, 3, generator=torch.Generator().manual_seed(2))
        assert torch.equal(ref, fast)
        assert torch.allclose(ll, ll_ref, atol=1e-4)
        # the reported log-likelihood is the model's, of the drawn pixels only
        flat = fast.reshape(6, 1, SIZE, SIZE)
        exact = log_likelihood(
            model.logits(flat), quantise(flat, model.levels), ~mask.repeat(3, 1, 1, 1).bool()
        )
    assert torch.allclose(ll.reshape(-1), exact, atol=1e-3)
    assert (ll < 0).all()


@pytest.mark.parametrize(
    "options,match",
    [({"temperature": 0.0}, "temperature must be positive"), ({"method": "fast"}, "method must be one of")],
)
def test_bad_sampling_options_are_one_line_errors(options, match):
    from generative.errors import SamplerError

    with pytest.raises(SamplerError, match=match):
        FAMILY.make_sampler(_model(), name="pixelcnn-local", sha256=None, meta={}, **options)


@pytest.mark.parametrize("changes", [{"kernel": 2}, {"window_up": 0, "window_left": 0}, {"window_right": -1}])
def test_bad_configs_are_sampler_errors(changes):
    from generative.errors import SamplerError

    with pytest.raises(SamplerError):
        _model(**changes)


def test_reference_method_gives_the_same_completions():
    model = _model()
    x = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(x)
    mask[..., :6, :] = 1
    a, b = (
        FAMILY.make_sampler(model, name="pixelcnn-local", sha256=None, meta={}, method=m).sample(
            x, mask, 2, generator=torch.Generator().manual_seed(3)
        )
        for m in ("cached", "reference")
    )
    assert torch.equal(a.images, b.images)
    assert a.info["log_likelihood"].shape == (2, 1)
