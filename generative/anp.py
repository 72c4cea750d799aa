"""Attentive Neural Process: image completion as regression from pixel coordinates to intensities.

Kim, Mnih, Schwarz, Garnelo, Eslami, Rosenbaum, Vinyals, Teh, "Attentive Neural Processes" (2019),
§2–3 and Fig. 2 (the AIPO paper, Harvey et al. 2021, compares against it). An image is a function
from coordinates ``x ∈ [-1, 1]²`` to intensities ``y``; the observed pixels are the *context*
``(x_C, y_C)`` and every pixel is a *target* ``x_T``:

* deterministic path: an MLP of each ``(x_i, y_i)`` and multihead **self-attention** over the
  context give representations ``r_i``; multihead **cross-attention** with queries ``MLP(x_T)`` and
  keys ``MLP(x_C)`` (the same MLP) gives a target-specific ``r*(x_T)`` (§3, "Attentive Neural
  Processes");
* latent path: an MLP and self-attention over the context, a mean over it, and a Gaussian
  ``q(z | s_C)``: one ``z`` per completion is what makes the completions differ;
* decoder: an MLP of ``[x_T, r*(x_T), z]`` -> a Gaussian ``N(μ_y, σ_y²)`` per target.

Training maximises the ELBO of §2 (Eq. 3): ``E_{q(z|s_{C∪T})}[log p(y_T | x_T, r_C, z)] −
KL(q(z | s_{C∪T}) || q(z | s_C))``, with the context/target splits drawn from the trainer's mask
distribution (the AIPO masks: the observed pixels are the context, random pixels of the whole image
the targets). Attention is :class:`torch.nn.MultiheadAttention`.

Sampling: the context is the observed pixels, at most ``context_cap`` of them (a random subset for
larger observations: the attention cost grows with the context); one ``z ~ q(z | s_C)`` per
completion; the completion is ``μ_y`` at every pixel (``pixel_noise=True`` adds ``σ_y`` noise).

Deviations: a learned "empty" context point is always present (so a mask with nothing observed
still has a context and the attention is defined; the paper always has a context); σ_y has a floor
of ``min_sigma``; the latent path's mean includes the empty point.

Shapes: images/masks ``(B, 1, H, W)``; coordinates ``(B, N, 2)``, intensities ``(B, N, 1)``;
completions ``(n, B, 1, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generative.errors import SamplerError
from generative.family import ModelSampler, SamplerFamily, reject_options


@dataclass(frozen=True)
class ANPConfig:
    """Widths (``dim`` of every representation, ``latent`` of ``z``), ``heads``, the context cap and
    the number of targets per training image, and the training recipe."""

    preset: str = "cpu"
    image_size: int = 64
    dim: int = 64
    latent: int = 32
    heads: int = 4
    self_attention_layers: int = 1
    context_cap: int = 256
    targets: int = 256
    min_sigma: float = 0.01
    steps: int = 800
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_rate: float = 0.0


PRESETS = {
    "tiny": ANPConfig(
        preset="tiny",
        image_size=32,
        dim=16,
        latent=8,
        heads=2,
        context_cap=64,
        targets=64,
        steps=200,
        batch_size=8,
    ),
    "cpu": ANPConfig(),
    # §4.2 of Kim et al. (CelebA 32×32: width 128, 8 heads, 2 self-attention layers); 256×256 here, untrained
    "paper": ANPConfig(
        preset="paper",
        image_size=256,
        dim=128,
        latent=128,
        heads=8,
        self_attention_layers=2,
        context_cap=2048,
        targets=2048,
        steps=100_000,
    ),
}


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def coordinates(size: int, device=None) -> torch.Tensor:
    """The pixel centres of a ``size × size`` image in [-1, 1]², raster order: ``(size², 2)`` (row, col)."""
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    return torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)


def normal(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal draws from ``generator`` (on its own device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def random_subsets(where: torch.Tensor, cap: int, generator: torch.Generator | None = None):
    """Per row of ``where`` ``(B, P)`` bool: at most ``cap`` of its true indices, chosen at random.

    Returns ``index`` ``(B, N)`` long and ``valid`` ``(B, N)`` bool (``N`` = the largest count; rows
    with fewer are padded with index 0, ``valid`` False).
    """
    b, p = where.shape
    keys = torch.rand(
        b, p, generator=generator, device=generator.device if generator is not None else where.device
    )
    keys = torch.where(where, keys.to(where.device), torch.full_like(where, 2.0, dtype=keys.dtype))
    counts = where.sum(1).clamp(max=cap)
    n = max(int(counts.max()), 1)
    index = keys.argsort(1)[:, :n]  # the true entries first, in random order
    valid = torch.arange(n, device=where.device)[None] < counts[:, None]
    return torch.where(valid, index, torch.zeros_like(index)), valid


class SetAttention(nn.Module):
    """Multihead self-attention over a set with padding, residual + layer norm: ``(B, N, d) -> (B, N, d)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(h, h, h, key_padding_mask=~valid, need_weights=False)
        return self.norm(h + out)


class ANP(nn.Module):
    """The Attentive Neural Process of the module docstring (one image = one function)."""

    def __init__(self, config: ANPConfig):
        super().__init__()
        c = config
        if c.dim % c.heads:
            raise SamplerError(f"dim ({c.dim}) must be divisible by heads ({c.heads})")
        self.config, self.image_size = config, c.image_size
        d = c.dim
        self.empty = nn.Parameter(torch.zeros(1, 1, 3))  # the learned empty context point (x, y)
        self.det_encoder = mlp([3, d, d])
        self.det_attention = nn.ModuleList(SetAttention(d, c.heads) for _ in range(c.self_attention_layers))
        self.key_encoder = mlp([2, d, d])  # queries and keys: the same MLP of the coordinates
        self.cross_attention = nn.MultiheadAttention(d, c.heads, batch_first=True)
        self.latent_encoder = mlp([3, d, d])
        self.latent_attention = nn.ModuleList(
            SetAttention(d, c.heads) for _ in range(c.self_attention_layers)
        )
        self.latent_head = mlp([d, d, 2 * c.latent])
        self.decoder = mlp([2 + d + c.latent, d, d, 2])
        with torch.no_grad():
            self.decoder[-1].bias[0] = 0.5  # start at mid grey, inside [0, 1] (completions are clamped)
        self.register_buffer("grid", coordinates(c.image_size), persistent=False)

    # -- the two paths ---------------------------------------------------------------------------
    def _with_empty(self, xy: torch.Tensor, valid: torch.Tensor):
        b = len(xy)
        return torch.cat([self.empty.expand(b, 1, 3), xy], 1), torch.cat([valid.new_ones(b, 1), valid], 1)

    def latent_prior(self, xy: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | s)`` of a set ``xy`` ``(B, N, 3)``: mean and standard deviation ``(B, latent)``."""
        xy, valid = self._with_empty(xy, valid)
        h = self.latent_encoder(xy)
        for layer in self.latent_attention:
            h = layer(h, valid)
        w = valid.float().unsqueeze(-1)
        s = (h * w).sum(1) / w.sum(1)
        mu, raw = self.latent_head(s).chunk(2, -1)
        return mu, 0.1 + 0.9 * torch.sigmoid(raw)  # the σ parameterisation of Kim et al.

    def deterministic(self, xy: torch.Tensor, valid: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
        """``r*(x_T)`` ``(B, T, d)``: self-attention over the context, cross-attention from the targets."""
        xy, valid = self._with_empty(xy, valid)
        r = self.det_encoder(xy)
        for layer in self.det_attention:
            r = layer(r, valid)
        out, _ = self.cross_attention(
            self.key_encoder(x_target),
            self.key_encoder(xy[..., :2]),
            r,
            key_padding_mask=~valid,
            need_weights=False,
        )
        return out

    def decode(
        self, x_target: torch.Tensor, r: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_y, σ_y)`` ``(B, T)`` of intensities (in [0, 1] units) at ``x_target`` ``(B, T, 2)``."""
        out = self.decoder(torch.cat([x_target, r, z.unsqueeze(1).expand(-1, x_target.shape[1], -1)], -1))
        mu, raw = out.unbind(-1)
        return mu, self.config.min_sigma + (1 - self.config.min_sigma) * F.softplus(raw)

    # -- sets from images ----------------------------------------------------------------------------
    def points(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``(B, N, 3)``: the coordinates and intensities (in [-1, 1]) of pixels ``index`` ``(B, N)``."""
        y = x.flatten(1).gather(1, index).unsqueeze(-1) * 2 - 1
        return torch.cat([self.grid[index], y], -1)

    def context(self, x: torch.Tensor, mask: torch.Tensor, generator=None):
        """The observed pixels, at most ``context_cap`` per image: ``(B, N, 3)`` and ``valid`` ``(B, N)``."""
        index, valid = random_subsets(mask.flatten(1) > 0, self.config.context_cap, generator)
        return self.points(x, index), valid

    # -- training ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        """The negative ELBO per target pixel (nats): context = observed pixels, targets = random pixels."""
        ctx, ctx_valid = self.context(x, mask)
        t_index, t_valid = random_subsets(
            torch.ones_like(mask.flatten(1), dtype=torch.bool), self.config.targets
        )
        tgt = self.points(x, t_index)
        mu_c, sd_c = self.latent_prior(ctx, ctx_valid)
        mu_t, sd_t = self.latent_prior(torch.cat([ctx, tgt], 1), torch.cat([ctx_valid, t_valid], 1))
        z = mu_t + sd_t * torch.randn_like(sd_t)  # the reparameterised posterior draw
        mu_y, sd_y = self.decode(tgt[..., :2], self.deterministic(ctx, ctx_valid, tgt[..., :2]), z)
        y = (tgt[..., 2] + 1) / 2
        nll = -torch.distributions.Normal(mu_y, sd_y).log_prob(y).sum(1)  # (B,)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu_t, sd_t), torch.distributions.Normal(mu_c, sd_c)
        ).sum(1)
        t = self.config.targets
        loss = (nll + kl).mean() / t
        return {
            "loss": loss,
            "nll": nll.mean().detach() / t,
            "kl": kl.mean().detach() / t,
            "mse": ((mu_y - y) ** 2).mean().detach(),
        }

    def validate(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        stats = self(x, mask)
        done = self.complete(x * mask, mask, 1, generator=None)[0]
        missing = 1 - mask
        l2 = (((done - x) ** 2) * missing).sum() / missing.sum().clamp(min=1)
        return {"loss": stats["loss"], "kl": stats["kl"], "mse_missing": l2}

    # -- sampling --------------------------------------------------------------------------------------
    def complete(self, observed, mask, n, *, generator=None, pixel_noise: bool = False) -> torch.Tensor:
        """``n`` completions ``(n, B, 1, H, W)``: one ``z ~ q(z | s_C)`` each, the decoder mean (+ noise)."""
        b, _, h, w = observed.shape
        ctx, valid = self.context(observed, mask, generator)
        mu_z, sd_z = self.latent_prior(ctx, valid)  # (B, latent)
        z = mu_z + sd_z * normal((n, b, self.config.latent), generator, observed.device)  # (n, B, latent)
        grid = self.grid.expand(b, -1, -1)
        r = self.deterministic(ctx, valid, grid)  # (B, H·W, d): the same for every z
        rep = lambda t: t.unsqueeze(0).expand(n, *t.shape).reshape(n * b, *t.shape[1:])  # noqa: E731
        mu_y, sd_y = self.decode(rep(grid), rep(r), z.reshape(n * b, -1))
        if pixel_noise:
            mu_y = mu_y + sd_y * normal(mu_y.shape, generator, observed.device)
        return mu_y.reshape(n, b, 1, h, w)


class ANPSampler(ModelSampler):
    """boed's Sampler over a trained :class:`ANP`; option ``pixel_noise`` (default off)."""

    def __init__(self, model: ANP, *, name, sha256, meta, pixel_noise=None):
        super().__init__(model, name=name, sha256=sha256, meta=meta)
        self.pixel_noise = bool(pixel_noise)

    def complete(self, observed, mask, n, generator):
        return self.model.complete(observed, mask, n, generator=generator, pixel_noise=self.pixel_noise)


class ANPFamily(SamplerFamily):
    """One Adam phase with a linear warm-up and cosine decay; trained on the AIPO masks (the default)."""

    model_id = "anp"
    title = "Attentive Neural Process"
    config_cls = ANPConfig
    presets = PRESETS
    names = ("anp",)
    progress_keys = ("loss", "nll", "kl", "mse")

    def build_model(self, config: ANPConfig, options=None) -> ANP:
        return ANP(config)

    def phases(self, model, net, config, ema):
        from boed.runtime.schedule import warmup_cosine
        from boed.runtime.training import Phase

        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        schedule = lambda s: warmup_cosine(s, steps=config.steps, warmup_steps=config.warmup_steps, final=0.1)  # noqa: E731
        return [
            Phase(
                lambda b: net(b[0], b[1], "main"), opt, schedule=schedule, grad_clip=config.grad_clip, ema=ema
            )
        ]

    def make_sampler(self, model, *, name, sha256, meta, pixel_noise=None, **options):
        reject_options(name, options, ("pixel_noise",))
        return ANPSampler(model, name=name, sha256=sha256, meta=meta, pixel_noise=pixel_noise)


FAMILY = ANPFamily()
