"""The shared sampler contract (boed.protocols.Sampler), run on every registered sampler.

Tiny untrained models: the contract is about shapes, observed pixels, seeding and edge masks,
not about sample quality.
"""

from __future__ import annotations

import pytest
import torch

from boed.protocols import Completions, Sampler
from generative.errors import SamplerError
from generative.registry import SAMPLERS, SPECS, build_sampler, get_family, trainable, untrained_checkpoint

SIZE = 32


@pytest.fixture(scope="module", params=SAMPLERS)
def sampler(request, tmp_path_factory):
    # each name runs a file of its own kind (aipo-r needs an AIPO-R checkpoint, retrieval an index)
    name = request.param
    checkpoint = untrained_checkpoint(name, tmp_path_factory.mktemp(name) / "tiny", preset="tiny")
    return build_sampler(name, checkpoint, preset="tiny")


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, SIZE, SIZE, generator=g)
    m = torch.zeros(batch, 1, SIZE, SIZE)
    m[:, :, 4:14, 6:20] = 1
    m[-1, :, 20:30, 2:12] = 1
    return x * m, m


CASES = [  # (batch, n)
    (1, 1),
    (2, 3),
    (3, 10),
]


def test_is_a_sampler(sampler):
    assert isinstance(sampler, Sampler)
    assert sampler.image_size == SIZE
    if SPECS[sampler.name].needs_checkpoint:  # the store records which file drove a run
        assert isinstance(sampler.sha256, str) and len(sampler.sha256) == 64
    assert sampler.meta["kind"] == "sampler"


@pytest.mark.parametrize("batch,n", CASES)
def test_shapes_range_and_observed_pixels(sampler, batch, n):
    observed, mask = _inputs(batch)
    out = sampler.sample(observed, mask, n, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, Completions)
    assert out.images.shape == (n, batch, 1, SIZE, SIZE)
    assert out.images.dtype == torch.float32
    assert out.log_weights is None or out.log_weights.shape == (n, batch)
    assert out.images.min() >= 0 and out.images.max() <= 1
    kept = mask.bool().expand(n, *mask.shape)
    assert torch.equal(out.images[kept], observed.expand(n, *observed.shape)[kept])


def test_reproducible_with_seeded_generator(sampler):
    observed, mask = _inputs()
    a = sampler.sample(observed, mask, 4, generator=torch.Generator().manual_seed(7)).images
    b = sampler.sample(observed, mask, 4, generator=torch.Generator().manual_seed(7)).images
    c = sampler.sample(observed, mask, 4, generator=torch.Generator().manual_seed(8)).images
    assert torch.equal(a, b)
    assert torch.equal(a, c) == SPECS[sampler.name].deterministic


def test_completions_differ_unless_deterministic(sampler):
    # a deterministic sampler (a point estimate) returns n identical completions and says so
    observed, mask = _inputs(1)
    out = sampler.sample(observed, mask, 3, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(out[0], out[1]) == SPECS[sampler.name].deterministic


def test_all_observed_returns_the_input(sampler):
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    out = sampler.sample(x, torch.ones_like(x), 3).images
    assert torch.equal(out, x.expand(3, *x.shape))


def test_nothing_observed(sampler):
    x = torch.zeros(2, 1, SIZE, SIZE)
    out = sampler.sample(x, torch.zeros_like(x), 2, generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 2, 1, SIZE, SIZE)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "observed_shape,mask_shape,n",
    [
        ((2, 1, 16, 16), (2, 1, 16, 16), 2),  # wrong size
        ((2, 1, SIZE, SIZE), (1, 1, SIZE, SIZE), 2),  # mask does not match
        ((2, 3, SIZE, SIZE), (2, 3, SIZE, SIZE), 2),  # colour
        ((2, 1, SIZE, SIZE), (2, 1, SIZE, SIZE), 0),  # n < 1
    ],
)
def test_bad_input_is_a_sampler_error(sampler, observed_shape, mask_shape, n):
    with pytest.raises(SamplerError):
        sampler.sample(torch.zeros(observed_shape), torch.zeros(mask_shape), n)


def test_non_binary_mask_is_rejected(sampler):
    x = torch.zeros(1, 1, SIZE, SIZE)
    with pytest.raises(SamplerError, match="0 or 1"):
        sampler.sample(x, torch.full_like(x, 0.5), 1)


def test_unknown_name_lists_valid_names():
    with pytest.raises(SamplerError, match=", ".join(SAMPLERS)):
        build_sampler("pixelcnn-typo")


def test_missing_shipped_checkpoint_is_a_clear_error():
    with pytest.raises(SamplerError, match="train-sampler"):
        build_sampler("aipo", preset="no-such-preset")


def test_info_holds_per_draw_or_per_image_tensors(sampler):
    observed, mask = _inputs(2)
    out = sampler.sample(observed, mask, 3, generator=torch.Generator().manual_seed(0))
    for key, value in (out.info or {}).items():
        assert torch.is_tensor(value), key
        assert tuple(value.shape[:2]) == (3, 2) or tuple(value.shape[:1]) == (2,), key


def test_every_spec_builds_or_trains_one_way():
    for name, spec in SPECS.items():
        assert (spec.family is None) != (spec.build is None), name
        assert spec.artifact is None or spec.build is not None, name


@pytest.mark.parametrize("name", trainable())
def test_trains_with_the_shared_trainer(name, tmp_path):
    # every trainable sampler trains through generative.training (no loop of its own) and its
    # checkpoint builds a sampler that keeps the contract
    from generative.training import TrainOptions, train_generative

    family = get_family(name)
    config = family.for_name(family.config("tiny", steps=2, batch_size=4), name)
    images = torch.rand(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = tmp_path / name
    options = TrainOptions(out=out, val_every=2, ckpt_every=2, val_images=4, workers=0)
    _, state, metrics = train_generative(
        family, name, config, images, images[:4], options, log=lambda _: None
    )
    assert state.step == 2 and metrics and all(k.startswith("val_") for k in metrics)
    trained = build_sampler(name, out, preset="tiny")
    observed, mask = _inputs(1)
    done = trained.sample(observed, mask, 2, generator=torch.Generator().manual_seed(0)).images
    assert done.shape == (2, 1, 1, SIZE, SIZE)
    assert torch.equal(
        done[mask.bool().expand(2, *mask.shape)],
        observed.expand(2, *observed.shape)[mask.bool().expand(2, *mask.shape)],
    )
