"""AIPO and AIPO-R: image completion by amortized inference with a partial encoder.

Harvey, Naderiparizi, Wood, "Image Completion via Inference in Deep Generative Models" (2021), §3.
A hierarchical VAE (generative/vdvae.py) models p(I); a *partial encoder* q̂(z | Î), the same network
as the full encoder with one extra input channel, sees the observation Î = cat([I ⊙ m, m]) and
replaces the prior when sampling (Eq. 6): z ~ q̂(·|Î), then I ~ p(I | z) — one top-down pass of the
decoder, each group's q̂(z_l | z_<l, Î) conditioned on the decoder state.

Objectives (per image, in nats; :meth:`AIPO.losses` returns them per pixel for the optimiser):

* ``vae``: the ELBO, Eq. 2: E_q(z|I)[log p(I|z)] − Σ_l KL(q(z_l|·) || p(z_l|·)).
* ``aipo`` (forward KL, Eq. 10): E_q(z|I)[log p(I|z) + log q̂(z|Î) − log q(z|I)], computed along the
  *posterior* path as log p(I|z) − Σ_l KL(q(z_l|·, I) || q̂(z_l|·, Î)). A lower bound on
  log p(I | Î) (Eq. 11), so it is also the evaluation's conditional bound.
* ``aipo-r`` (reverse KL, Eq. 15): z drawn from q̂ along the decoder path, the likelihood of the
  *observed* pixels only, minus Σ_l KL(q̂(z_l|·, Î) || p(z_l|·)).
* ``vae+aipo`` / ``vae+aipo-r``: the sum of the ELBO and the AIPO(-R) objective. §3.2 notes that all
  three objectives are maximised together, so this trains everything from scratch while keeping the
  prior trained for the ELBO evaluation; the shipped checkpoint uses ``vae+aipo`` (a deviation from
  the paper, which pretrains the VAE for days and then trains AIPO, or trains AIPO alone).

Pretrained mode (§3.2): :func:`AIPO.freeze_vae` stops gradients into the encoder and decoder so
only the partial encoder learns; :func:`AIPO.init_partial_from_encoder` copies the full encoder into
the partial encoder (image channel copied, mask channel zero), which the paper recommends for
AIPO-R and not for AIPO.

Shapes: images and masks ``(B, 1, H, W)`` in [0, 1] and {0, 1}; completions ``(n, B, 1, H, W)``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from generative.config import OBJECTIVES, PRESETS, AIPOConfig
from generative.errors import SamplerError
from generative.family import ModelSampler, SamplerFamily
from generative.likelihood import bits_per_dim, dmol_log_prob, dmol_sample
from generative.vdvae import Encoder, HierarchicalVAE, PosteriorFn, to_model_range


def partial_input(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The partial encoder's input cat([x*m, m]) ``(B, 2, H, W)``, x in the model range [-1, 1]."""
    return torch.cat([to_model_range(x) * mask, mask], dim=1)


class AIPO(nn.Module):
    """Hierarchical VAE + partial encoder; ``vae`` (q, p) and ``partial_encoder`` (q̂) sub-modules."""

    def __init__(self, config: AIPOConfig):
        super().__init__()
        self.config = config
        self.vae = HierarchicalVAE(config.arch())
        self.partial_encoder = Encoder(config.arch(), in_channels=2)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor, objective: str) -> dict[str, torch.Tensor]:
        """Same as :meth:`losses` (``forward`` so that DDP synchronises gradients)."""
        return self.losses(x, mask, objective)

    # -- pretrained mode (§3.2) ----------------------------------------------------------------
    def freeze_vae(self) -> None:
        self.vae.requires_grad_(False)

    @torch.no_grad()
    def init_partial_from_encoder(self) -> None:
        source = self.vae.encoder.state_dict()
        for name, tensor in self.partial_encoder.state_dict().items():
            if name == "in_conv.weight":
                tensor.zero_()
                tensor[:, :1].copy_(source[name])
            else:
                tensor.copy_(source[name])

    # -- objectives ----------------------------------------------------------------------------
    def partial_fn(self, x: torch.Tensor, mask: torch.Tensor) -> PosteriorFn:
        acts = self.partial_encoder.activations(partial_input(x, mask))
        return lambda l, h: self.partial_encoder.posterior(l, h, acts)

    def check(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        self.vae.check_images(x)
        if mask.shape != x.shape:
            raise SamplerError(f"mask shape {tuple(mask.shape)} differs from image shape {tuple(x.shape)}")

    def losses(self, x: torch.Tensor, mask: torch.Tensor, objective: str) -> dict[str, torch.Tensor]:
        """Negative objective per dimension (``loss``) plus bits/dim statistics for logging."""
        if objective not in OBJECTIVES:
            raise SamplerError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        self.check(x, mask)
        dims = x[0].numel()
        target = to_model_range(x)
        stats: dict[str, torch.Tensor] = {}
        loss = x.new_zeros(())
        if objective != "aipo-r":  # posterior path: ELBO and/or the forward-KL AIPO bound
            compare: dict[str, PosteriorFn | str] = {}
            if objective in ("vae", "vae+aipo", "vae+aipo-r"):
                compare["prior"] = "prior"
            if objective in ("aipo", "vae+aipo"):
                compare["partial"] = self.partial_fn(x, mask)
            params, kls = self.vae.decoder(len(x), self.vae.posterior_fn(x), compare)
            nll = -dmol_log_prob(params, target).flatten(1).sum(1)
            stats["nll_bpd"] = bits_per_dim(nll, dims).mean()
            if "prior" in kls:
                elbo = nll + kls["prior"]
                loss = loss + elbo.mean() / dims
                stats["elbo_bpd"] = bits_per_dim(elbo, dims).mean()
                stats["kl_bpd"] = bits_per_dim(kls["prior"], dims).mean()
            if "partial" in kls:
                bound = nll + kls["partial"]
                loss = loss + bound.mean() / dims
                stats["cond_bpd"] = bits_per_dim(bound, dims).mean()
                stats["kl_partial_bpd"] = bits_per_dim(kls["partial"], dims).mean()
        if objective in ("aipo-r", "vae+aipo-r"):  # partial-encoder path, observed pixels only
            params, kls = self.vae.decoder(len(x), self.partial_fn(x, mask), {"prior": "prior"})
            obs_nll = -(dmol_log_prob(params, target) * mask).flatten(1).sum(1)
            rev = obs_nll + kls["prior"]
            loss = loss + rev.mean() / dims
            stats["rev_bpd"] = bits_per_dim(rev, dims).mean()
            stats["kl_rev_bpd"] = bits_per_dim(kls["prior"], dims).mean()
        stats["loss"] = loss
        return stats

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image ``elbo`` (Eq. 2) and conditional bound ``cond`` (Eq. 10) in nats, ``(B,)``.

        One posterior-path pass gives both (the same z drawn from q(z|I)); negate for bits.
        """
        self.check(x, mask)
        compare = {"prior": "prior", "partial": self.partial_fn(x, mask)}
        params, kls = self.vae.decoder(len(x), self.vae.posterior_fn(x), compare)
        ll = dmol_log_prob(params, to_model_range(x)).flatten(1).sum(1)
        return {"elbo": ll - kls["prior"], "cond": ll - kls["partial"]}

    # -- sampling (Eq. 6) ----------------------------------------------------------------------
    @torch.no_grad()
    def complete(
        self,
        observed: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        *,
        temperature: float = 1.0,
        pixel_noise: bool = False,
        generator: torch.Generator | None = None,
        use_partial_encoder: bool = True,
    ) -> torch.Tensor:
        """``n`` completions ``(n, B, 1, H, W)`` of ``observed`` ``(B, 1, H, W)``, observed pixels pasted.

        The partial encoder runs once on the B observations; its activations are expanded n times
        (n-major, so a reshape gives ``(n, B, ...)``) and the decoder draws all n·B samples in one
        batched pass. ``use_partial_encoder=False`` samples the unconditional prior instead (the
        ``vae`` sampler).
        """
        batch = len(observed)
        draw: PosteriorFn | None = None
        if use_partial_encoder:
            acts = self.partial_encoder.activations(partial_input(observed, mask))
            acts = {
                r: a.unsqueeze(0).expand(n, *a.shape).reshape(n * batch, *a.shape[1:])
                for r, a in acts.items()
            }
            draw = lambda l, h: self.partial_encoder.posterior(l, h, acts)  # noqa: E731
        params, _ = self.vae.decoder(n * batch, draw, temperature=temperature, generator=generator)
        images = dmol_sample(params, generator=generator, noise=pixel_noise).view(
            n, batch, *observed.shape[1:]
        )
        return torch.where(mask.bool().unsqueeze(0), observed.unsqueeze(0), images)

    # -- checkpoints ---------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}


# -- adapter to boed.protocols.Sampler ---------------------------------------------------------------
class AIPOSampler(ModelSampler):
    """boed's Sampler protocol over a trained :class:`AIPO` (or its VAE alone for ``name="vae"``).

    ``sample(observed, mask, n, generator=None)`` → ``Completions(images (n, B, 1, H, W),
    log_weights=None)``: observed pixels are the input's exactly; values in [0, 1]; reproducible for
    a seeded ``generator`` (all noise is drawn from it); ``temperature`` scales the latent standard
    deviations (1 = the model, < 1 = more typical, less diverse completions); ``pixel_noise`` adds
    the logistic pixel noise of the likelihood (off by default: the mixture component's location,
    which is what the classifier was trained on — smooth images).
    """

    def __init__(
        self,
        model: AIPO,
        *,
        name: str = "aipo",
        sha256: str | None = None,
        meta: dict | None = None,
        temperature: float | None = None,
        pixel_noise: bool | None = None,
    ):
        super().__init__(model, name=name, sha256=sha256, meta=meta)
        self.temperature = model.config.temperature if temperature is None else float(temperature)
        self.pixel_noise = model.config.pixel_noise if pixel_noise is None else bool(pixel_noise)

    def complete(self, observed, mask, n, generator):
        return self.model.complete(
            observed,
            mask,
            n,
            temperature=self.temperature,
            pixel_noise=self.pixel_noise,
            generator=generator,
            use_partial_encoder=self.name != "vae",
        )


# -- the family: how the shared trainer, loader and registry handle AIPO ----------------------------
SAMPLER_FOR_OBJECTIVE = {
    "vae": "vae",
    "aipo": "aipo",
    "vae+aipo": "aipo",
    "aipo-r": "aipo-r",
    "vae+aipo-r": "aipo-r",
}
FINAL_LR_FACTOR = 0.1  # cosine decay to a tenth of the peak learning rate


def lr_schedule(config: AIPOConfig):
    """Learning-rate factor of step ``s``: linear warm-up, then cosine decay to a tenth."""
    from boed.runtime.schedule import warmup_cosine

    return lambda s: warmup_cosine(
        s, steps=config.steps, warmup_steps=config.warmup_steps, final=FINAL_LR_FACTOR
    )


class AIPOFamily(SamplerFamily):
    """AIPO / AIPO-R / the VAE baseline (see the module docstring).

    A checkpoint records the kind given by its objective (``SAMPLER_FOR_OBJECTIVE``): ``aipo``
    needs an ``aipo`` checkpoint and ``aipo-r`` an ``aipo-r`` one, since their partial encoders
    were trained with different objectives (and a ``vae`` checkpoint's partial encoder is
    untrained); ``vae`` accepts every kind. One AdamW phase (``main``) with a linear warm-up and a
    cosine decay to a tenth, gradient clipping, VD-VAE update skipping and an EMA with warm-up.
    """

    model_id = "aipo-hvae"
    title = "AIPO hierarchical VAE"
    config_cls = AIPOConfig
    presets = PRESETS
    names = ("aipo", "aipo-r", "vae")
    progress_keys = ("loss", "elbo_bpd", "cond_bpd", "rev_bpd", "kl_bpd", "kl_partial_bpd")

    def for_name(self, config: AIPOConfig, name: str, pretrained: bool = False) -> AIPOConfig:
        # from scratch: the ELBO and the AIPO(-R) objective together (§3.2: all maximised jointly)
        objective = "vae" if name == "vae" else name if pretrained else f"vae+{name}"
        return dataclasses.replace(config, objective=objective)

    def kind(self, config: AIPOConfig, name: str) -> str:
        return SAMPLER_FOR_OBJECTIVE[config.objective]

    def accepts(self, name: str, kind: str | None) -> bool:
        return name == "vae" or kind == name

    def build_model(self, config: AIPOConfig, options=None) -> AIPO:
        model = AIPO(config).to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU
        pretrained = getattr(options, "pretrained_vae", None)
        if pretrained is None:
            return model
        # §3.2: a trained unconditional VAE, only the partial encoder learns
        if config.objective.startswith("vae"):
            raise SamplerError(
                "with --pretrained-vae the objective must be aipo or aipo-r (the VAE is frozen)"
            )
        from generative.family import load_family_model

        base, _ = load_family_model(pretrained, self)
        base_arch, arch = (
            dataclasses.replace(c.arch(), grad_checkpoint=False) for c in (base.config, config)
        )
        if base_arch != arch:
            raise SamplerError(f"{pretrained}: its architecture differs from preset {config.preset!r}")
        model.vae.load_state_dict(base.vae.state_dict())
        init = options.init_partial_from_encoder
        if init if init is not None else config.objective == "aipo-r":
            model.init_partial_from_encoder()
        model.freeze_vae()
        return model

    def phases(self, model: AIPO, net, config: AIPOConfig, ema):
        from boed.runtime.training import Phase

        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=(config.adam_beta1, config.adam_beta2),
        )
        return [
            Phase(
                lambda b: net(b[0], b[1], config.objective),
                opt,
                schedule=lr_schedule(config),
                grad_clip=config.grad_clip,
                skip_threshold=config.skip_threshold,
                ema=ema,
            )
        ]

    def validate(self, module: AIPO, x: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        return {k: float(v) for k, v in module.losses(x, mask, module.config.objective).items()}

    def make_sampler(
        self, model: AIPO, *, name: str, sha256, meta, temperature=None, pixel_noise=None, **options
    ):
        from generative.family import reject_options

        reject_options(name, options, ("temperature", "pixel_noise"))
        model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU
        return AIPOSampler(
            model, name=name, sha256=sha256, meta=meta, temperature=temperature, pixel_noise=pixel_noise
        )


FAMILY = AIPOFamily()
