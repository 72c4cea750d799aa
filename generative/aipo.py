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

import torch
from torch import nn

from generative.config import OBJECTIVES, AIPOConfig
from generative.errors import SamplerError
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
class AIPOSampler:
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
        self.model = model.eval()
        self.name = name
        self.image_size = model.image_size
        self.sha256 = sha256
        self.meta = meta or {}
        self.temperature = model.config.temperature if temperature is None else float(temperature)
        self.pixel_noise = model.config.pixel_noise if pixel_noise is None else bool(pixel_noise)
        self.device = next(model.parameters()).device

    def _check(self, observed: torch.Tensor, mask: torch.Tensor, n: int) -> None:
        s = self.image_size
        if observed.ndim != 4 or tuple(observed.shape[1:]) != (1, s, s):
            raise SamplerError(f"{self.name}: observed must be (B, 1, {s}, {s}), got {tuple(observed.shape)}")
        if mask.shape != observed.shape:
            raise SamplerError(
                f"{self.name}: mask shape {tuple(mask.shape)} differs from observed {tuple(observed.shape)}"
            )
        if not isinstance(n, int) or n < 1:
            raise SamplerError(f"{self.name}: n must be a positive integer, got {n!r}")
        if not torch.all((mask == 0) | (mask == 1)):
            raise SamplerError(f"{self.name}: mask values must be 0 or 1")

    def sample(
        self, observed: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator | None = None
    ):
        from boed.protocols import Completions

        self._check(observed, mask, n)
        out_device = observed.device
        observed = observed.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        with torch.inference_mode():
            images = self.model.complete(
                observed * mask,
                mask,
                n,
                temperature=self.temperature,
                pixel_noise=self.pixel_noise,
                generator=generator,
                use_partial_encoder=self.name != "vae",
            )
            # paste the caller's own observed values back bit for bit
            images = torch.where(mask.bool().unsqueeze(0), observed.unsqueeze(0), images)
        return Completions(images=images.to(out_device), log_weights=None)
