"""The diffusion family: samplers ``diffusion`` (mask-conditioned DDIM) and ``repaint`` (RePaint on
the unconditional model), their adapters to :class:`boed.protocols.Sampler`, and training.

One family, one config class: ``for_name`` sets ``conditional`` from the name, a checkpoint records
the sampler it was trained as, and a conditional checkpoint cannot be run as ``repaint`` (or the
reverse): the networks have different inputs. Training is one AdamW phase (linear warm-up, cosine
decay to a tenth, gradient clipping at 1 as in Ho et al. 2020 Appendix B) with an EMA of the
weights (warm-up to ``ema_rate``). The trainer's default masks (the AIPO distribution) feed the
conditional model; the unconditional one ignores them.

Sampling options (``build_sampler(name, ckpt, **options)``; ``None`` = the config's default):

* ``diffusion``: ``steps`` (DDIM steps = network calls per completion), ``eta`` (Song et al. Eq. 16).
* ``repaint``: ``steps`` (grid of sampling timesteps), ``jump_length``, ``jump_n_sample``, ``eta``
  (1 = DDPM steps as in the paper). Calls per completion: :attr:`RePaintSampler.network_calls`.

All N completions of all B images run as one batch of N·B through the network.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path

import torch

from generative.diffusion.model import (
    PRESETS,
    DiffusionConfig,
    DiffusionModel,
    from_model_range,
    to_model_range,
)
from generative.diffusion.sampling import ddim_inpaint, repaint, repaint_calls
from generative.errors import SamplerError
from generative.family import ModelSampler, SamplerFamily, reject_options


def _positive_int(name: str, option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SamplerError(f"sampler {name!r}: {option} must be a positive integer, got {value!r}")
    return value


def _eta(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise SamplerError(f"sampler {name!r}: eta must be a number in [0, 1], got {value!r}")
    return float(value)


class _DiffusionSamplerBase(ModelSampler):
    """Shared half of both adapters: the model, its device, batching N completions of B images."""

    def __init__(self, model: DiffusionModel, *, name: str, sha256, meta, steps: int):
        super().__init__(model, name=name, sha256=sha256, meta=meta)
        steps = _positive_int(name, "steps", steps)
        if steps > model.config.timesteps:
            raise SamplerError(
                f"sampler {name!r}: steps must be at most {model.config.timesteps} "
                f"(the model's timesteps), got {steps}"
            )
        self.steps = steps
        self.clip = 1.0 if model.config.clip_x0 else None

    @abc.abstractmethod
    def _run(self, y: torch.Tensor, m: torch.Tensor, generator) -> torch.Tensor:
        """The N·B completions in the model range from the noised start (DDIM or RePaint)."""

    def complete(self, observed, mask, n, generator):
        b = observed.shape[0]
        y = to_model_range(observed).repeat(n, 1, 1, 1)  # (n·B, 1, S, S), completion-major
        m = mask.repeat(n, 1, 1, 1)
        x0 = self._run(y * m, m, generator)
        return from_model_range(x0).reshape(n, b, *observed.shape[1:])


class DiffusionSampler(_DiffusionSamplerBase):
    """``diffusion``: DDIM on the mask-conditioned model, ``steps`` network calls per completion."""

    def __init__(self, model, *, name, sha256, meta, steps: int, eta: float):
        super().__init__(model, name=name, sha256=sha256, meta=meta, steps=steps)
        self.eta = _eta(name, eta)

    @property
    def network_calls(self) -> int:
        return self.steps

    def _run(self, y, m, generator):
        model = self.model
        return ddim_inpaint(
            lambda x_t, t: model.eps(x_t, t, y, m),
            y,
            m,
            model.schedule,
            self.steps,
            eta=self.eta,
            clip=self.clip,
            generator=generator,
        )


class RePaintSampler(_DiffusionSamplerBase):
    """``repaint``: RePaint on the unconditional model (Lugmayr et al. 2022, Algorithm 1)."""

    def __init__(
        self, model, *, name, sha256, meta, steps: int, jump_length: int, jump_n_sample: int, eta: float
    ):
        super().__init__(model, name=name, sha256=sha256, meta=meta, steps=steps)
        self.jump_length = _positive_int(name, "jump_length", jump_length)
        self.jump_n_sample = _positive_int(name, "jump_n_sample", jump_n_sample)
        self.eta = _eta(name, eta)

    @property
    def network_calls(self) -> int:
        return repaint_calls(self.steps, self.jump_length, self.jump_n_sample)

    def _run(self, y, m, generator):
        model = self.model
        return repaint(
            lambda x_t, t: model.eps(x_t, t),
            y,
            m,
            model.schedule,
            self.steps,
            jump_length=self.jump_length,
            jump_n_sample=self.jump_n_sample,
            eta=self.eta,
            clip=self.clip,
            generator=generator,
        )


def lr_schedule(config: DiffusionConfig):
    """Learning-rate factor of step ``s``: linear warm-up, then cosine decay to a tenth."""
    from boed.runtime.schedule import warmup_cosine

    return lambda s: warmup_cosine(s, steps=config.steps, warmup_steps=config.warmup_steps, final=0.1)


class DiffusionFamily(SamplerFamily):
    """``diffusion`` and ``repaint`` (see the module docstring)."""

    model_id = "ddpm-unet"
    title = "DDPM UNet (diffusion / RePaint)"
    config_cls = DiffusionConfig
    presets = PRESETS
    names = ("diffusion", "repaint")
    progress_keys = ("loss",)

    def for_name(self, config: DiffusionConfig, name: str) -> DiffusionConfig:
        return dataclasses.replace(config, conditional=name == "diffusion")

    def kind(self, config: DiffusionConfig, name: str) -> str:
        return "diffusion" if config.conditional else "repaint"

    def build_model(self, config: DiffusionConfig, options=None) -> DiffusionModel:
        return DiffusionModel(config)

    def phases(self, model: DiffusionModel, net, config: DiffusionConfig, ema):
        from boed.runtime.training import Phase

        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        return [
            Phase(
                lambda b: net(b[0], b[1], "main"),
                opt,
                schedule=lr_schedule(config),
                grad_clip=config.grad_clip,
                skip_threshold=config.skip_threshold,
                ema=ema,
            )
        ]

    def make_sampler(
        self,
        model: DiffusionModel,
        *,
        name,
        sha256,
        meta,
        steps=None,
        eta=None,
        jump_length=None,
        jump_n_sample=None,
        **options,
    ):
        c = model.config
        if name == "diffusion":
            reject_options(
                name, options | {"jump_length": jump_length, "jump_n_sample": jump_n_sample}, ("steps", "eta")
            )
            return DiffusionSampler(
                model,
                name=name,
                sha256=sha256,
                meta=meta,
                steps=c.sample_steps if steps is None else steps,
                eta=c.eta if eta is None else eta,
            )
        reject_options(name, options, ("steps", "eta", "jump_length", "jump_n_sample"))
        return RePaintSampler(
            model,
            name=name,
            sha256=sha256,
            meta=meta,
            steps=c.repaint_steps if steps is None else steps,
            jump_length=c.jump_length if jump_length is None else jump_length,
            jump_n_sample=c.jump_n_sample if jump_n_sample is None else jump_n_sample,
            eta=c.repaint_eta if eta is None else eta,
        )

    def on_validate(self, module: DiffusionModel, x, mask, out: Path, step: int) -> None:
        """Write ``OUT.samples.png``: truth, observation and one completion of 8 validation images."""
        from PIL import Image

        name = "diffusion" if module.config.conditional else "repaint"
        sampler = self.make_sampler(module, name=name, sha256=None, meta={})
        done = sampler.sample(x * mask, mask, 1, generator=torch.Generator().manual_seed(step)).images[0]
        rows = torch.cat([x, x * mask + 0.3 * (1 - mask), done], dim=3)  # (8, 1, S, 3S)
        grid = torch.cat(list(rows[:, 0]), dim=0).clamp(0, 1)  # (8·S, 3S)
        path = Path(f"{out}.samples.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.cpu().numpy() * 255).round().astype("uint8")).save(path)


FAMILY = DiffusionFamily()
