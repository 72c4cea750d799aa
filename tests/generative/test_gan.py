"""The two GAN families: architectures, losses, the n_critic schedule, resume, grids, the sampler."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from generative.errors import SamplerError
from generative.gan import dcgan, wgan
from generative.gan.family import GANSampler, grid_path
from generative.registry import build_sampler, get_family, untrained_checkpoint
from generative.training import TrainOptions, train_generative

SIZE = 32


def _images(n=8, seed=0):
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "module,size,zdim,chans_at_4",
    [(dcgan, 32, 16, 16), (dcgan, 64, 100, 64), (wgan, 32, 16, 8), (wgan, 64, 128, 32)],
)
def test_architectures_map_latents_to_images_and_back(module, size, zdim, chans_at_4):
    preset = "tiny" if size == 32 else "cpu"
    config = module.FAMILY.config(preset)
    model = module.FAMILY.build_model(config).eval()
    assert model.latent_dim == zdim and config.image_size == size
    z = model.sample_latent((3,), torch.Generator().manual_seed(0))
    x = model.generate(z)
    assert x.shape == (3, 1, size, size) and x.min() >= 0 and x.max() <= 1
    assert model.critic(x).shape == (3,)
    convs = [m for m in model.generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert chans_at_4 in {c.out_channels for c in convs} | {getattr(model.generator, "start", 0)}


def test_latent_priors():
    g = torch.Generator().manual_seed(0)
    u = dcgan.FAMILY.build_model(dcgan.FAMILY.config("tiny")).sample_latent((4000,), g)
    assert (
        u.min() >= -1 and u.max() <= 1 and abs(float(u.mean())) < 0.02 and abs(float(u.var()) - 1 / 3) < 0.02
    )
    n = wgan.FAMILY.build_model(wgan.FAMILY.config("tiny")).sample_latent((4000,), g)
    assert abs(float(n.mean())) < 0.02 and abs(float(n.std()) - 1) < 0.02


def test_the_critic_has_layer_norm_and_no_batch_norm():
    model = wgan.FAMILY.build_model(wgan.FAMILY.config("tiny"))
    kinds = {type(m) for m in model.discriminator.modules()}
    assert nn.GroupNorm in kinds and nn.BatchNorm2d not in kinds
    assert all(m.num_groups == 1 for m in model.discriminator.modules() if isinstance(m, nn.GroupNorm))
    assert nn.BatchNorm2d in {type(m) for m in model.generator.modules()}
    residual = [m for m in model.modules() if isinstance(m, (wgan.ResBlockUp, wgan.ResBlockDown))]
    assert len(residual) == 6  # 3 up, 3 down at 32 px


def test_bad_image_size_is_a_sampler_error():
    with pytest.raises(SamplerError, match="4·2"):
        dcgan.FAMILY.build_model(dcgan.FAMILY.config("tiny", image_size=48))


class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.flatten()


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = <w, x>: ∇D = w everywhere, so the penalty is (‖w‖ − 1)², and W = <w, E x − E G(z)>
    model = wgan.FAMILY.build_model(wgan.FAMILY.config("tiny"))
    w = torch.randn(1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.05
    model.discriminator = Linear(w)
    x = _images(4)
    torch.manual_seed(3)
    stats = model(x, None, "critic")
    assert float(stats["gp"]) == pytest.approx(float((w.norm() - 1) ** 2), rel=1e-5)
    torch.manual_seed(3)
    fake = model.generator(model.sample_latent((4,))).detach()
    expected_w = float((x * 2 - 1).flatten(1).mean(0) @ w.flatten() - fake.flatten(1).mean(0) @ w.flatten())
    assert float(stats["wasserstein"]) == pytest.approx(expected_w, rel=1e-4, abs=1e-6)
    assert float(stats["loss"].detach()) == pytest.approx(-expected_w + 10 * float(stats["gp"]), rel=1e-4)


def test_dcgan_losses_are_the_gan_losses():
    model = dcgan.FAMILY.build_model(dcgan.FAMILY.config("tiny"))
    x = _images(4)
    torch.manual_seed(0)
    d = model(x, None, "d")
    torch.manual_seed(0)
    fake = model.generator(model.sample_latent((4,)))
    # real and generated images share one batch-norm batch (see the DCGAN docstring)
    p = torch.sigmoid(model.discriminator(torch.cat([x * 2 - 1, fake])))
    real_p, fake_p = p[:4], p[4:]
    assert float(d["loss"].detach()) == pytest.approx(
        float((-real_p.log().mean() - (1 - fake_p).log().mean()).detach()), rel=1e-5
    )


def _train(name, out, steps, resume=False, callbacks=None, every=2, **changes):
    family = get_family(name)
    config = family.config("tiny", steps=steps, batch_size=4, **changes)
    options = TrainOptions(out=out, val_every=every, ckpt_every=every, val_images=4, workers=0, resume=resume)
    return train_generative(
        family, name, config, _images(), _images(4, 1), options, log=lambda _: None, callbacks=callbacks
    )


def test_n_critic_runs_the_generator_every_nth_step(tmp_path):
    seen = []
    _train("wgan-vitoria", tmp_path / "w", 6, every=100, callbacks=[lambda st, s: seen.append("g.loss" in s)])
    assert seen == [False, True, False, True, False, True]  # tiny: n_critic = 2
    seen.clear()
    _train(
        "wgan-vitoria",
        tmp_path / "w3",
        6,
        every=100,
        n_critic=3,
        callbacks=[lambda st, s: seen.append("g.loss" in s)],
    )
    assert seen == [False, False, True, False, False, True]
    keys = []
    _train("gan-yeh", tmp_path / "d", 1, every=100, callbacks=[lambda st, s: keys.append(set(s))])
    assert {"d.loss", "d.real", "d.fake", "g.loss"} <= keys[0]


@pytest.mark.parametrize("name", ["gan-yeh", "wgan-vitoria"])
def test_resume_is_bit_exact(name, tmp_path):
    out = tmp_path / "run"
    _train(name, out, 2)
    resumed, state, _ = _train(name, out, 4, resume=True)
    straight, _, _ = _train(name, tmp_path / "straight", 4)
    assert state.step == 4
    for (key, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_validation_writes_sample_grids(tmp_path):
    from PIL import Image

    out = tmp_path / "grid"
    _, _, metrics = _train("wgan-vitoria", out, 2)
    assert "val_wasserstein" in metrics
    png = grid_path(out, 2)
    assert png.is_file() and Image.open(png).size == (8 * 33 + 1, 3 * 33 + 1)  # 16 samples + 8 real


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    return {n: untrained_checkpoint(n, root / n, preset="tiny") for n in ("gan-yeh", "wgan-vitoria")}


def _obs(b=2):
    x = _images(b, 3)
    m = torch.ones(b, 1, SIZE, SIZE)
    m[:, :, 8:24, 8:24] = 0
    return x * m, m


def test_sampler_options_and_their_errors(checkpoints):
    s = build_sampler(
        "gan-yeh", checkpoints["gan-yeh"], preset="tiny", loss="yeh+grad", iterations=3, blend=False
    )
    assert isinstance(s, GANSampler) and s.needs_grad and s.options.loss == "yeh+grad" and not s.blend
    assert s.options.iterations == 3 and s.options.lam == 0.003
    for bad, match in (
        ({"loss": "vitoria"}, "valid: yeh, yeh[+]grad"),
        ({"iterations": 0}, "iterations"),
        ({"lr": -1.0}, "lr"),
        ({"langevin": float("nan")}, "langevin"),
        ({"temperature": 1.0}, "no option temperature"),
    ):
        with pytest.raises(SamplerError, match=match):
            build_sampler("gan-yeh", checkpoints["gan-yeh"], preset="tiny", **bad)
    with pytest.raises(SamplerError, match="valid: vitoria"):
        build_sampler("wgan-vitoria", checkpoints["wgan-vitoria"], preset="tiny", loss="yeh")
    with pytest.raises(SamplerError, match="run it as --sampler gan-yeh"):
        build_sampler("wgan-vitoria", checkpoints["gan-yeh"], preset="tiny")


def test_blending_changes_only_the_hole_and_info_reports_the_stray(checkpoints):
    observed, mask = _obs()
    kw = dict(preset="tiny", iterations=3)
    raw = build_sampler("wgan-vitoria", checkpoints["wgan-vitoria"], blend=False, **kw)
    blended = build_sampler("wgan-vitoria", checkpoints["wgan-vitoria"], blend=True, **kw)
    a = raw.sample(observed, mask, 2, generator=torch.Generator().manual_seed(0))
    b = blended.sample(observed, mask, 2, generator=torch.Generator().manual_seed(0))
    hole = (1 - mask).bool().expand_as(a.images)
    assert torch.equal(a.images[~hole], b.images[~hole]) and not torch.equal(a.images[hole], b.images[hole])
    # without blending the hole is G(ẑ) itself; context_l1 = mean |G(ẑ) − y| over observed pixels
    z = raw.model.sample_latent((2, 2), torch.Generator().manual_seed(0))
    assert a.info["context_l1"].shape == (2, 2) and torch.all(a.info["context_l1"] > 0)
    assert a.info["iterations"].max() <= 3
    assert z.shape == (2, 2, 16)


def test_batched_sampling_equals_one_image_at_a_time(checkpoints):
    s = build_sampler("gan-yeh", checkpoints["gan-yeh"], preset="tiny", iterations=3, blend=True)
    observed, mask = _obs(1)
    together = s.sample(
        observed.expand(2, -1, -1, -1), mask.expand(2, -1, -1, -1), 1, torch.Generator().manual_seed(0)
    )
    alone = s.sample(observed, mask, 2, torch.Generator().manual_seed(0))
    # the same latents (drawn in the same order) give the same completions, batched or not
    assert torch.allclose(together.images[0, :, 0], alone.images[:, 0, 0], atol=1e-5)


DDP_SCRIPT = """
import torch
from boed.runtime.devices import init_distributed, shutdown_distributed
from generative.registry import get_family
from generative.training import TrainOptions, train_generative
dist = init_distributed(torch.device("cpu"))
family = get_family("wgan-vitoria")
config = family.config("tiny", steps=4, batch_size=4)
images = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
train_generative(family, "wgan-vitoria", config, images, images[:4],
                 TrainOptions(out={out!r}, val_every=2, ckpt_every=2, val_images=4, workers=0),
                 dist=dist, log=lambda _: None)
shutdown_distributed()
"""


@pytest.mark.slow
def test_wgan_gp_trains_under_two_process_ddp(tmp_path):
    """torchrun-style environment, gloo on the CPU: the gradient penalty's double backward under DDP."""
    script = tmp_path / "ddp.py"
    out = tmp_path / "ddp"
    script.write_text(DDP_SCRIPT.format(out=str(out)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = os.environ | {
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path.cwd()),
        }
        procs.append(
            subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True)
        )
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["training"]["step"] == 4 and meta["sampler"] == "wgan-vitoria"
    assert dataclasses.is_dataclass(wgan.FAMILY.config("tiny"))
