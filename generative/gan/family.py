"""The two GAN inpainting samplers on the shared interface: ``gan-yeh`` and ``wgan-vitoria``.

* :class:`GANFamily`: what the shared trainer needs (build, two phases, full-image "masks",
  validation, sample grids) for a model with ``generator`` / ``discriminator`` submodules and the
  methods ``sample_latent``, ``generate``, ``critic``, ``forward(x, mask, phase)``
  (:class:`generative.gan.dcgan.DCGAN`, :class:`generative.gan.wgan.WGANGP`).
* :class:`GANSampler`: inpainting by latent search (:mod:`generative.gan.latent_search`), batched
  over the ``B`` images and ``n`` random initialisations, then optional Poisson blending
  (:mod:`generative.gan.poisson`). **N restarts of a MAP search are not posterior samples** (see
  :mod:`generative.gan.latent_search`); ``langevin > 0`` adds noise to the z updates.

Sampler options (``build_sampler(name, ckpt, **options)``; defaults from the checkpoint's config):
``loss`` (gan-yeh: ``yeh`` | ``yeh+grad``; wgan-vitoria: ``vitoria``), ``iterations``, ``lr``,
``patience`` (early stopping, 0 = off), ``blend`` (Poisson blending on/off), ``langevin``,
``alpha``, ``beta``, ``eta``, ``lam``.

``Completions.info`` per draw ``(n, B)``: ``search_loss`` (the final loss), ``iterations`` (how many
the search ran before it stopped) and ``context_l1``, the mean |G(ẑ) − y| over the observed pixels
*before* blending and pasting (how far the generator's image strays from what was observed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generative.errors import SamplerError
from generative.family import ModelSampler, SamplerFamily, reject_options
from generative.gan.latent_search import LOSSES, SearchOptions, latent_search

OPTIONS = ("loss", "iterations", "lr", "patience", "blend", "langevin", "alpha", "beta", "eta", "lam")


def full_masks(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """All-observed masks ``(n, 1, size, size)``: the GANs train on full images."""
    return torch.ones(n, 1, size, size)


def save_grid(images: torch.Tensor, path: Path, cols: int = 8) -> Path:
    """Write ``(K, 1, S, S)`` images in [0, 1] as one grayscale PNG grid (1-pixel gaps)."""
    from PIL import Image

    k, _, s, _ = images.shape
    rows = -(-k // cols)
    canvas = torch.ones(rows * (s + 1) + 1, cols * (s + 1) + 1)
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, c = divmod(i, cols)
        canvas[1 + r * (s + 1) : 1 + r * (s + 1) + s, 1 + c * (s + 1) : 1 + c * (s + 1) + s] = img[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((canvas.numpy() * 255).round().astype("uint8"), mode="L").save(path)
    return path


def grid_path(out: Path, step: int) -> Path:
    """``OUT.samples-<step>.png`` beside the checkpoint ``OUT``."""
    from boed.runtime.checkpoints import checkpoint_paths

    weights = checkpoint_paths(out)[0]
    return weights.with_name(f"{weights.with_suffix('').name}.samples-{step:06d}.png")


class GANFamily(SamplerFamily):
    """Shared half of the two GAN families (subclasses set the model and the phase recipe)."""

    model_cls: type = nn.Module
    losses: tuple[str, ...] = LOSSES
    d_phase: str = "d"

    def build_model(self, config: Any, options: Any = None) -> nn.Module:
        if getattr(options, "pretrained_vae", None) is not None:
            raise SamplerError(f"{self.names[0]}: --pretrained-vae is an AIPO option")
        return self.model_cls(config).to(memory_format=torch.channels_last)  # faster CPU convs

    def _optimizers(
        self, model: nn.Module, config: Any
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        betas = (config.adam_beta1, config.adam_beta2)
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=config.lr, betas=betas)
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=config.lr, betas=betas)
        return opt_d, opt_g

    def masks(self, config: Any):
        return full_masks

    def validate(self, module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        return module.validate(x, mask)

    def on_validate(
        self, module: nn.Module, x: torch.Tensor, mask: torch.Tensor, out: Path, step: int
    ) -> None:
        # the same 16 latents at every validation (the trainer seeds the RNG before this hook)
        z = module.sample_latent((16,))
        save_grid(torch.cat([module.generate(z), x[:8]]), grid_path(Path(out), step))

    def make_sampler(self, model: nn.Module, *, name: str, sha256, meta, **options):
        reject_options(name, options, OPTIONS)
        return GANSampler(model, name=name, sha256=sha256, meta=meta, losses=self.losses, **options)


def _check_option(name: str, key: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise SamplerError(f"sampler {name!r}: option {key}={value!r}: {what}")


class GANSampler(ModelSampler):
    """Latent-search inpainting over a trained GAN (see the module docstring)."""

    needs_grad = True

    def __init__(self, model: nn.Module, *, name: str, sha256, meta, losses: tuple[str, ...], **options: Any):
        config = model.config
        super().__init__(model, name=name, sha256=sha256, meta=meta)
        self.model.requires_grad_(False)  # only z is optimised
        given = {k: v for k, v in options.items() if v is not None}
        defaults = {
            "loss": config.search_loss,
            "iterations": config.search_iterations,
            "lr": config.search_lr,
            "patience": config.search_patience,
            "langevin": config.langevin,
        }
        values = defaults | {k: v for k, v in given.items() if k != "blend"}
        self.blend = bool(given.get("blend", config.blend))
        _check_option(name, "loss", values["loss"], values["loss"] in losses, f"valid: {', '.join(losses)}")
        for key in ("iterations", "patience"):
            v = values[key]
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= (1 if key == "iterations" else 0)
            _check_option(name, key, v, ok, "must be an integer >= " + ("1" if key == "iterations" else "0"))
        for key in ("lr", "langevin", "alpha", "beta", "eta", "lam"):
            if key in values:
                v = values[key]
                ok = (
                    isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and v >= 0
                    and v == v
                    and v != float("inf")
                )
                _check_option(name, key, v, ok and (key != "lr" or v > 0), "must be a finite number >= 0")
        fields = {f.name for f in dataclasses.fields(SearchOptions)}
        self.options = SearchOptions(**{k: v for k, v in values.items() if k in fields})

    def complete(self, observed: torch.Tensor, mask: torch.Tensor, n: int, generator) -> Any:
        from boed.protocols import Completions
        from generative.gan.poisson import poisson_blend

        b = len(observed)
        z0 = self.model.sample_latent((n, b), generator)
        found = latent_search(
            self.model.generate,
            self.model.critic,
            z0,
            observed,
            mask,
            self.options,
            bounds=self.model.z_bounds,
            generator=generator,
        )
        images = found.images.clamp(0, 1)
        seen = mask.sum((1, 2, 3)).clamp_min(1)  # (B,)
        stray = ((images - observed) * mask).abs().sum((2, 3, 4)) / seen
        if self.blend:
            images = poisson_blend(images, observed, mask).clamp(0, 1)
        info = {"search_loss": found.loss, "iterations": found.iterations.float(), "context_l1": stray}
        return Completions(images=images, info=info)
