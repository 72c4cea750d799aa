"""Inpainting by a search in a GAN's latent space (Yeh et al. 2017 §3; Vitoria et al. 2018 §3.2).

Given a trained generator ``G`` and discriminator / critic ``D``, an observation ``y`` and its mask
``M`` (1 = observed), find

    ẑ = argmin_z  α·L_c(z | y, M) + β·L_g(z | y, M) + η·L_p(z)

by Adam on ``z``, projecting ``z`` back to its box after every step, then complete the image with
``G(ẑ)`` (optionally Poisson-blended, :mod:`generative.gan.poisson`). The terms:

* :func:`importance_weights` ``W`` (Yeh et al. Eq. 3, Vitoria et al. Eq. 5): each *observed* pixel
  is weighted by the fraction of *missing* pixels in the 7×7 window around it; missing pixels weigh 0.
* :func:`context_loss` ``L_c = ‖W ⊙ (G(z) − y)‖₁`` (Yeh Eq. 4, Vitoria Eq. 6).
* :func:`gradient_loss` ``L_g = ‖W ⊙ M ⊙ (∇G(z) − ∇y)‖₁`` (Vitoria Eq. 7): image gradients by
  central differences, one-sided (forward or backward) where the central stencil would read a
  missing pixel or leave the image (:func:`masked_gradients`).
* the prior loss: Yeh's ``λ·log(1 − D(G(z)))`` (Eq. 5, ``D`` a probability, λ = 0.003) or
  Vitoria's ``−D(G(z))`` (Eq. 8, ``D`` a WGAN critic); see :data:`LOSSES`.

Losses are sums over an image's pixels (the norms of the papers) and each completion's ``z`` is its
own search: the batch of ``n × B`` searches is summed into one scalar only so that one backward pass
serves all of them; Adam is element-wise, so every search follows exactly the path it would follow
alone (:func:`latent_search` with ``B = 1, n = 1`` gives the same result; tested). Early stopping is
per search: a search whose loss has not improved by a relative ``tol`` for ``patience`` iterations
is frozen, and the loop ends when every search is frozen or after ``iterations``.

**These are not posterior samples.** N restarts of a MAP-style search give N local optima of one
loss, whose spread says how non-convex the loss is, not how uncertain the completion is; an EIG
estimate that averages over them treats them as equally weighted draws, which they are not. The
optional Langevin variant (``langevin > 0``) adds Gaussian noise ``langevin·sqrt(2·lr)·ξ`` to every
z update (an Adam-preconditioned, unadjusted Langevin heuristic, not an exact sampler either): it
spreads the completions more (``benchmarks/gan_inpainting.py`` measures the diversity of both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("yeh", "yeh+grad", "vitoria")
"""``yeh``: L_c + λ·log(1 − D) (Yeh Eq. 2); ``yeh+grad``: α·L_c + β·L_g + η·λ·log(1 − D) (the
"Yeh et al. adding gradient loss" rows of Vitoria's Tables 1–2); ``vitoria``: α·L_c + β·L_g − η·D
(Vitoria Eq. 4)."""


def importance_weights(mask: torch.Tensor, window: int = 7) -> torch.Tensor:
    """``W`` of Yeh et al. Eq. 3: ``W_i = Σ_{j∈N(i)} (1 − M_j) / |N(i)|`` for observed ``i``, else 0.

    ``N(i)`` is the ``window × window`` square centred at ``i`` (``i`` included; it is observed, so
    it adds nothing but its count), cut to the image: ``|N(i)|`` counts the in-image pixels only.

    Args:
        mask: ``(B, 1, H, W)``, 1 = observed.
    Returns:
        ``(B, 1, H, W)`` weights in [0, 1]: pixels next to the hole weigh most.
    """
    if window % 2 != 1 or window < 1:
        raise ValueError(f"window must be an odd positive size, got {window}")
    pad = window // 2
    kernel = torch.ones(1, 1, window, window, dtype=mask.dtype, device=mask.device)
    missing = F.conv2d(1 - mask, kernel, padding=pad)
    count = F.conv2d(torch.ones_like(mask[:1]), kernel, padding=pad)
    return mask * missing / count


def masked_gradients(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite-difference gradients ``(d/drow, d/dcol)`` that read observed pixels only.

    At pixel ``i`` along one axis: the central difference ``(f[i+1] − f[i−1]) / 2`` when both
    neighbours are observed, the forward ``f[i+1] − f[i]`` when only the next one is, the backward
    ``f[i] − f[i−1]`` when only the previous one is, and 0 when neither is (outside the image counts
    as missing) and at missing pixels. The stencil depends on ``mask`` only, so it is the same for
    ``G(z)`` and ``y``.

    Args:
        image: ``(..., H, W)``; mask ``(..., H, W)`` broadcastable to it, 1 = observed.
    Returns:
        two tensors shaped like ``image``.
    """
    out = []
    for dim in (-2, -1):
        pad = [0, 0, 0, 0]
        pad[(0 if dim == -1 else 2)] = pad[(1 if dim == -1 else 3)] = 1
        f = F.pad(image, pad)
        m = F.pad(mask.expand_as(image), pad)
        n = image.shape[dim]
        nxt, prv = f.narrow(dim, 2, n), f.narrow(dim, 0, n)
        has_n, has_p = m.narrow(dim, 2, n) > 0, m.narrow(dim, 0, n) > 0
        central = (nxt - prv) / 2
        forward = nxt - image
        backward = image - prv
        zero = torch.zeros_like(image)
        out.append(
            (mask > 0)
            * torch.where(
                has_n & has_p, central, torch.where(has_n, forward, torch.where(has_p, backward, zero))
            )
        )
    return out[0], out[1]


def context_loss(generated: torch.Tensor, observed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``L_c = ‖W ⊙ (G(z) − y)‖₁`` per image: ``(..., 1, H, W)`` → ``(...)``."""
    return (weights * (generated - observed)).abs().flatten(-3).sum(-1)


def gradient_loss(
    generated: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``L_g = ‖W ⊙ M ⊙ (∇G(z) − ∇y)‖₁`` per image (both gradient components), ``(...)``.

    The stencil is linear and shared, so ``∇G(z) − ∇y = ∇(G(z) − y)``.
    """
    gr, gc = masked_gradients(generated - observed, mask)
    w = weights * mask
    return ((w * gr).abs() + (w * gc).abs()).flatten(-3).sum(-1)


@dataclass(frozen=True)
class SearchOptions:
    """How one search runs (defaults: the papers' values where they state one).

    Attributes:
        loss: one of :data:`LOSSES`.
        iterations: Adam steps (Yeh: 1,500; Vitoria: 1,000).
        lr: Adam's learning rate (Vitoria: 0.03; Yeh does not state one).
        betas: Adam's (β1, β2) (Vitoria: 0.9, 0.999).
        alpha, beta, eta: weights of L_c, L_g, L_p (Vitoria's chosen 0.1, 0.9, 0.5).
        lam: λ of Yeh's prior loss (0.003).
        window: side of the importance window (7).
        patience, tol: early stopping: freeze a search once its loss has not fallen below
            ``best − tol·|best|`` for ``patience`` iterations (``patience = 0``: never).
        langevin: noise scale of the Langevin variant (0: plain search).
    """

    loss: str = "vitoria"
    iterations: int = 1000
    lr: float = 0.03
    betas: tuple[float, float] = (0.9, 0.999)
    alpha: float = 0.1
    beta: float = 0.9
    eta: float = 0.5
    lam: float = 0.003
    window: int = 7
    patience: int = 100
    tol: float = 1e-3
    langevin: float = 0.0


def total_loss(
    options: SearchOptions,
    generated: torch.Tensor,
    critic: torch.Tensor,
    observed: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The search loss of every completion, ``(n, B)``.

    Args:
        generated: ``(n, B, 1, H, W)`` ``G(z)`` in the observation's range.
        critic: ``(n, B)`` raw discriminator outputs: a logit (Yeh: ``D = sigmoid(logit)``, so
            ``log(1 − D) = −softplus(logit)``) or a WGAN critic value (Vitoria).
        observed, mask, weights: ``(B, 1, H, W)``.
    """
    o = options
    lc = context_loss(generated, observed, weights)
    if o.loss == "yeh":
        return lc + o.lam * -F.softplus(critic)
    lg = gradient_loss(generated, observed, mask, weights)
    if o.loss == "yeh+grad":
        return o.alpha * lc + o.beta * lg + o.eta * o.lam * -F.softplus(critic)
    if o.loss == "vitoria":
        return o.alpha * lc + o.beta * lg - o.eta * critic
    raise ValueError(f"unknown loss {o.loss!r}; valid: {', '.join(LOSSES)}")


@dataclass
class SearchResult:
    """``z`` ``(n, B, Z)``, ``images`` ``G(ẑ)`` ``(n, B, 1, H, W)``, final ``loss`` ``(n, B)``,
    ``iterations`` each search ran ``(n, B)``."""

    z: torch.Tensor
    images: torch.Tensor
    loss: torch.Tensor
    iterations: torch.Tensor


def latent_search(
    generate,
    critic,
    z0: torch.Tensor,
    observed: torch.Tensor,
    mask: torch.Tensor,
    options: SearchOptions,
    *,
    bounds: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Run ``n × B`` latent searches at once (see the module docstring).

    Args:
        generate: ``z (K, Z) -> images (K, 1, H, W)`` in the observation's range (differentiable).
        critic: ``images (K, 1, H, W) -> (K,)`` raw discriminator outputs (differentiable).
        z0: ``(n, B, Z)`` initial latents (drawn by the caller from its generator).
        observed, mask: ``(B, 1, H, W)``.
        bounds: the box ``z`` is projected to after every step.
        generator: the Langevin noise's source (CPU generator; needed when ``langevin > 0``).
    """
    n, b, zdim = z0.shape
    lo, hi = bounds
    weights = importance_weights(mask, options.window)
    z = z0.detach().clone().clamp_(lo, hi).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=options.lr, betas=options.betas)
    best = torch.full((n, b), float("inf"), device=z.device)
    since = torch.zeros(n, b, dtype=torch.long, device=z.device)
    done = torch.zeros(n, b, dtype=torch.bool, device=z.device)
    ran = torch.zeros(n, b, dtype=torch.long, device=z.device)
    noise_scale = options.langevin * (2 * options.lr) ** 0.5
    for _ in range(options.iterations):
        opt.zero_grad(set_to_none=True)
        images = generate(z.reshape(n * b, zdim)).reshape(n, b, *observed.shape[1:])
        loss = total_loss(
            options, images, critic(images.flatten(0, 1)).reshape(n, b), observed, mask, weights
        )
        loss.sum().backward()
        before = z.detach().clone()
        opt.step()
        with torch.no_grad():
            if noise_scale > 0:
                xi = torch.randn(z.shape, generator=generator).to(z.device)
                z.add_(noise_scale * xi)
            z.clamp_(lo, hi)
            z.copy_(torch.where(done.unsqueeze(-1), before, z))  # frozen searches stay where they stopped
            ran += (~done).long()
            current = loss.detach()
            improved = torch.isinf(best) | (
                current < best - options.tol * best.abs().nan_to_num(0.0, 0.0, 0.0)
            )
            best = torch.where(improved & ~done, current, best)
            since = torch.where(improved, torch.zeros_like(since), since + 1)
            if options.patience > 0:
                done |= since >= options.patience
        if bool(done.all()):
            break
    with torch.no_grad():
        images = generate(z.detach().reshape(n * b, zdim)).reshape(n, b, *observed.shape[1:])
        final = total_loss(
            options, images, critic(images.flatten(0, 1)).reshape(n, b), observed, mask, weights
        )
    return SearchResult(z=z.detach(), images=images, loss=final, iterations=ran)
