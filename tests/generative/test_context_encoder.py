"""Context encoders: the overlap band, the §5.2 tricks, the WGAN critic, phases and checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generative.context_encoder import FAMILY, ContextEncoder, loss_weights, mixed_masks, soft_labels
from generative.errors import SamplerError
from generative.metrics import mse_missing
from generative.registry import build_sampler, untrained_checkpoint

SIZE = 32


def _model(name="context-encoder", seed=0, **changes) -> ContextEncoder:
    torch.manual_seed(seed)
    return FAMILY.build_model(FAMILY.for_name(FAMILY.config("tiny", **changes), name))


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, SIZE, SIZE, generator=g)
    m = torch.ones(b, 1, SIZE, SIZE)
    m[..., 8:24, 8:24] = 0
    return x, m


def test_loss_weights_known_answer():
    m = torch.ones(1, 1, 7, 7)
    m[..., 3, 3] = 0  # one missing pixel
    w = loss_weights(m, overlap=1, overlap_weight=20.0)
    want = torch.zeros(7, 7)
    want[2:5, 2:5] = 20.0  # the 8 observed neighbours (Chebyshev distance 1)
    want[3, 3] = 1.0
    assert torch.equal(w[0, 0], want)
    assert torch.equal(loss_weights(m, 0, 20.0), 1 - m)


def test_l2_reconstruction_is_the_missing_pixel_mse():
    model = _model().eval()
    x, m = _batch()
    pred = model.generator(x * m, m)
    done = model.complete(x * m, m)
    want = mse_missing(done.unsqueeze(0), x, m).mean()
    torch.testing.assert_close(model.reconstruction(pred, x, m), want)
    # the overlap band adds its weighted error on top
    banded = _model(overlap=2, overlap_weight=10.0).eval()
    banded.load_state_dict(model.state_dict())
    assert banded.reconstruction(pred, x, m) > want


def test_soft_noisy_labels():
    c = FAMILY.config("tiny", label_flip=0.0)
    torch.manual_seed(0)
    real, fake = soft_labels(1000, True, c, "cpu"), soft_labels(1000, False, c, "cpu")
    assert real.min() >= 0.9 and real.max() <= 1.1 and real.std() > 0.03
    assert fake.min() >= 0.0 and fake.max() <= 0.2
    flipped = soft_labels(1000, True, FAMILY.config("tiny", label_flip=1.0), "cpu")
    assert flipped.max() <= 0.2
    some = soft_labels(4000, True, FAMILY.config("tiny", label_flip=0.25), "cpu")
    assert 0.2 < float((some <= 0.2).float().mean()) < 0.3


def test_discriminator_sees_separate_real_and_fake_batches():
    model = _model("context-encoder-adv").train()
    x, m = _batch(4)
    seen = []
    model.discriminator.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    model(x, m, "d")
    assert len(seen) == 2 and all(len(s) == 4 for s in seen)  # two pure batches, never mixed
    assert torch.equal(seen[0], x)  # the real batch alone
    assert torch.equal(seen[1][m.bool().expand_as(x)], x[m.bool().expand_as(x)])  # observed pasted


def test_generator_loss_is_non_saturating():
    model = _model("context-encoder-adv", rec_weight=0.9).train()
    x, m = _batch(4)
    torch.manual_seed(3)
    stats = model(x, m, "g")
    torch.manual_seed(3)
    pred = model.generator(x * m, m)
    logits = model.discriminator(m * x + (1 - m) * pred)
    adv = F.softplus(-logits).mean()  # -log sigmoid(D): maximise log D
    torch.testing.assert_close(stats["adv"], adv.detach())
    torch.testing.assert_close(stats["loss"], 0.9 * model.reconstruction(pred, x, m) + 0.1 * adv)


def test_wgan_critic_is_clipped_and_linear():
    model = _model("context-encoder-wgan", clip=0.01).train()
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p.mul_(0).add_(0.5)
    x, m = _batch(4)
    stats = model(x, m, "d")
    assert all(p.abs().max() <= 0.01 for p in model.discriminator.parameters())
    d_real, d_fake = model.discriminator(x), model.discriminator(model.complete(x * m, m).detach())
    torch.testing.assert_close(stats["loss"], d_fake.mean() - d_real.mean())


@pytest.mark.parametrize(
    "name,n_phases,g_steps",
    [
        ("context-encoder", 1, [0, 1, 2, 3, 4, 5]),
        ("context-encoder-adv", 2, [0, 1, 2, 3, 4, 5]),
        ("context-encoder-wgan", 2, [2, 5]),
    ],
)
def test_phases(name, n_phases, g_steps):
    config = FAMILY.for_name(FAMILY.config("tiny", n_critic=3), name)
    model = FAMILY.build_model(config)
    phases = FAMILY.phases(model, model, config, None)
    assert len(phases) == n_phases
    g = phases[-1]
    assert [s for s in range(6) if g.when is None or g.when(s)] == g_steps
    if n_phases == 2:
        assert phases[0].name == "d" and phases[0].when is None
        assert {id(p) for p in phases[0].params()} == {id(p) for p in model.discriminator.parameters()}
    assert {id(p) for p in g.params()} == {id(p) for p in model.generator.parameters()}


def test_names_set_the_loss_and_checkpoints_keep_their_kind(tmp_path):
    assert [FAMILY.for_name(FAMILY.config("tiny"), n).loss for n in FAMILY.names] == ["l2", "adv", "wgan"]
    path = untrained_checkpoint("context-encoder-adv", tmp_path / "adv", preset="tiny")
    s = build_sampler("context-encoder-adv", path, preset="tiny")
    assert s.meta["sampler"] == "context-encoder-adv" and s.meta["config"]["loss"] == "adv"
    with pytest.raises(SamplerError, match="run it as --sampler context-encoder-adv"):
        build_sampler("context-encoder", path, preset="tiny")
    with pytest.raises(SamplerError, match="no option"):
        build_sampler("context-encoder-adv", path, preset="tiny", temperature=1.0)


def test_sampler_is_deterministic_and_pastes_the_observation(tmp_path):
    path = untrained_checkpoint("context-encoder", tmp_path / "l2", preset="tiny")
    s = build_sampler("context-encoder", path, preset="tiny")
    x, m = _batch(2)
    a = s.sample(x * m, m, 3, generator=torch.Generator().manual_seed(0)).images
    b = s.sample(x * m, m, 3, generator=torch.Generator().manual_seed(1)).images
    assert s.deterministic and torch.equal(a, b) and torch.equal(a[0], a[2])
    assert torch.equal(a[0][m.bool()], x[m.bool()])


def test_training_learns_a_constant_image():
    # a known answer: on copies of one image the L2 context encoder learns to paint it
    from generative.training import TrainOptions, train_generative

    config = FAMILY.config("tiny", steps=40, batch_size=8, lr=3e-3, masks="aipo")
    target = torch.linspace(0.2, 0.8, SIZE).expand(SIZE, SIZE).reshape(1, 1, SIZE, SIZE)
    images = target.expand(16, 1, SIZE, SIZE).clone()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        opts = TrainOptions(out=Path(d) / "ce", val_every=40, ckpt_every=40, val_images=4, workers=0)
        model, state, metrics = train_generative(
            FAMILY, "context-encoder", config, images, images[:4], opts, log=lambda _: None
        )
    assert state.step == 40 and metrics["val_mse"] < 0.003


def test_bad_configs_are_sampler_errors():
    with pytest.raises(SamplerError, match="divisible"):
        FAMILY.config("tiny", image_size=36)
    with pytest.raises(SamplerError, match="loss must be"):
        FAMILY.config("tiny", loss="l1")
    with pytest.raises(SamplerError, match="unknown mask"):
        mixed_masks("aipo,nope")
    with pytest.raises(SamplerError, match="serves"):
        FAMILY.for_name(FAMILY.config("tiny"), "aipo")


def test_mixed_masks_draw_from_each_distribution():
    draw = mixed_masks("centre_square,aipo")
    masks = draw(64, SIZE, torch.Generator().manual_seed(0))
    centre = torch.ones(1, SIZE, SIZE)
    centre[:, 8:24, 8:24] = 0
    is_centre = torch.tensor([torch.equal(mk, centre) for mk in masks])
    assert masks.shape == (64, 1, SIZE, SIZE) and 10 < int(is_centre.sum()) < 54
