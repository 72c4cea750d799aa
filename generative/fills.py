"""Training-free local fills: harmonic (Laplace), total-variation and mean-image inpainting.

The "local methods" of Burlin, Le Calonnec & Duperier, "Deep Image Inpainting" (2017,
introduction): they extend what the context shows smoothly into the hole and know nothing of
anatomy, so they are the floor every learned sampler should beat. All three are deterministic
(``deterministic = True``): ``sample(..., n)`` returns ``n`` identical completions, so the EIG of
Eq. 17 of Harvey et al. (2021) degenerates to a point estimate, the information gain of that one
completion.

* ``harmonic``: the missing pixels solve Laplace's equation ``Δu = 0`` with the observed pixels as
  Dirichlet data and zero-flux (Neumann) image borders: the 5-point discrete Laplacian on the
  missing pixels, one sparse linear solve per image (``scipy.sparse.linalg.spsolve``). Option
  ``method="biharmonic"``: ``Δ²u = 0`` by scikit-image's ``inpaint_biharmonic`` (Damelin & Hoang,
  "On Surface Completion and Image Inpainting by Biharmonic Functions", 2018).
* ``tv``: total-variation inpainting (Chan & Shen, "Mathematical models for local nontexture
  inpaintings", 2002, noise-free case): ``min_u TV(u)`` (isotropic) subject to ``u = x`` on the
  observed pixels, by the primal–dual algorithm of Chambolle & Pock, "A first-order primal-dual
  algorithm for convex problems with applications to imaging" (2011, Alg. 1, τσ‖∇‖² ≤ 1). Our own
  short solver: scikit-image's ``denoise_tv_*`` denoise a whole image and take no mask, and no
  installed library solves the masked problem. Batched in torch; ``iterations`` is an option.
* ``mean``: the missing pixels are those of the mean image of the training images, an artifact
  built once (:func:`build_mean_image`, a ``sampler`` checkpoint holding ``mean`` ``(1, S, S)``).

With nothing observed, harmonic and TV have no data: they fill with the constant ``0.5``.

Shapes: ``observed``, ``mask`` ``(B, 1, S, S)``; completions ``(n, B, 1, S, S)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from generative.errors import SamplerError
from generative.family import SamplerBase, reject_options

EMPTY_FILL = 0.5  # value of every pixel when nothing is observed (harmonic, TV)
TV_ITERATIONS = {"tiny": 100}  # per preset; default 300 (the tiny preset is for fast tests)


def _image_size(preset: str) -> int:
    from boed.config import ConfigError, get_preset

    try:
        return get_preset(preset).image_size
    except ConfigError as exc:
        raise SamplerError(str(exc)) from None


# -- harmonic ---------------------------------------------------------------------------------------
def harmonic_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Solve ``Δu = 0`` on the unknown pixels of one ``(H, W)`` image (``known`` boolean).

    5-point stencil; a neighbour outside the image is left out (zero flux across the border), so
    each unknown pixel equals the mean of its in-image neighbours. Returns the filled ``(H, W)``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    h, w = image.shape
    out = image.astype(np.float64).copy()
    unknown = ~known
    if not unknown.any():
        return out
    if not known.any():
        out[:] = EMPTY_FILL
        return out
    index = -np.ones((h, w), dtype=np.int64)
    rows_u, cols_u = np.nonzero(unknown)
    index[rows_u, cols_u] = np.arange(len(rows_u))
    degree = np.zeros(len(rows_u))
    rhs = np.zeros(len(rows_u))
    ii, jj = [], []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = rows_u + dr, cols_u + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        degree += inside
        rr, cc, me = r[inside], c[inside], np.nonzero(inside)[0]
        other = index[rr, cc]
        free = other >= 0
        ii.append(me[free])
        jj.append(other[free])
        np.add.at(rhs, me[~free], out[rr[~free], cc[~free]])
    n = len(rows_u)
    ii, jj = np.concatenate(ii), np.concatenate(jj)
    data = np.concatenate([degree, -np.ones(len(ii))])
    a = coo_matrix((data, (np.concatenate([np.arange(n), ii]), np.concatenate([np.arange(n), jj]))), (n, n))
    out[rows_u, cols_u] = spsolve(a.tocsr(), rhs)
    return out


def biharmonic_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``Δ²u = 0`` on the unknown pixels (scikit-image's ``inpaint_biharmonic``), ``(H, W)``."""
    from skimage.restoration import inpaint_biharmonic

    if known.all():
        return image.astype(np.float64)
    if not known.any():
        return np.full(image.shape, EMPTY_FILL)
    return inpaint_biharmonic(image.astype(np.float64), ~known)


# -- total variation --------------------------------------------------------------------------------
def _grad(u: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann borders: ``(B, 1, H, W) -> (B, 2, H, W)``."""
    gx = torch.zeros_like(u)
    gy = torch.zeros_like(u)
    gx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    gy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    return torch.cat([gx, gy], 1)


def _div(p: torch.Tensor) -> torch.Tensor:
    """The negative adjoint of :func:`_grad`: ``(B, 2, H, W) -> (B, 1, H, W)``."""
    px, py = p[:, :1], p[:, 1:]
    dx = torch.zeros_like(px)
    dy = torch.zeros_like(py)
    dx[..., :, 0] = px[..., :, 0]
    dx[..., :, 1:-1] = px[..., :, 1:-1] - px[..., :, :-2]
    dx[..., :, -1] = -px[..., :, -2]
    dy[..., 0, :] = py[..., 0, :]
    dy[..., 1:-1, :] = py[..., 1:-1, :] - py[..., :-2, :]
    dy[..., -1, :] = -py[..., -2, :]
    return dx + dy


def total_variation(u: torch.Tensor) -> torch.Tensor:
    """Isotropic TV of each image, ``(B, 1, H, W) -> (B,)`` (forward differences)."""
    return _grad(u).pow(2).sum(1).sqrt().flatten(1).sum(1)


def tv_fill(
    observed: torch.Tensor, mask: torch.Tensor, iterations: int = 300, init: torch.Tensor | None = None
) -> torch.Tensor:
    """``argmin TV(u)`` s.t. ``u = observed`` where ``mask`` is 1 (Chambolle–Pock), ``(B, 1, H, W)``.

    The primal step's proximal map is the projection onto the constraint (reset the observed
    pixels); the dual step projects onto the unit ball of each pixel's 2-vector. Starts from
    ``init`` (the ``tv`` sampler passes the harmonic fill: far fewer iterations to converge on
    large holes), else from the mean of the observed pixels; images with nothing observed are
    ``EMPTY_FILL``.
    """
    x = observed.double()
    m = mask.double()
    count = m.flatten(1).sum(1)
    start = (x * m).flatten(1).sum(1) / count.clamp_min(1)
    start = torch.where(count > 0, start, torch.full_like(start, EMPTY_FILL))
    first = start.view(-1, 1, 1, 1).expand_as(x) if init is None else init.double()
    u = torch.where(m > 0, x, first)
    ubar, p = u.clone(), torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=x.dtype, device=x.device)
    tau = sigma = 1 / 8**0.5  # ‖∇‖² ≤ 8 in 2-D
    for _ in range(int(iterations)):
        p = p + sigma * _grad(ubar)
        p = p / p.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1)
        new = u + tau * _div(p)
        new = torch.where(m > 0, x, new)
        ubar, u = 2 * new - u, new
    return u.float()


# -- samplers ---------------------------------------------------------------------------------------
class FillSampler(SamplerBase):
    """A deterministic fill as boed's Sampler: ``n`` identical completions (a point estimate)."""

    deterministic = True

    def __init__(self, fill, *, name: str, image_size: int, sha256=None, meta=None, device="cpu"):
        super().__init__(name=name, image_size=image_size, sha256=sha256, meta=meta, device=device)
        self.fill = fill  # (observed, mask) (B, 1, S, S) -> (B, 1, S, S)

    def complete(self, observed, mask, n, generator):
        one = self.fill(observed, mask)
        return one.unsqueeze(0).expand(n, *one.shape).clone()


def _per_image(fn):
    def fill(observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        xs = observed[:, 0].cpu().double().numpy()
        ks = mask[:, 0].cpu().numpy() > 0.5
        out = np.stack([fn(x, k) for x, k in zip(xs, ks, strict=True)])
        return torch.from_numpy(out).float().unsqueeze(1).to(observed.device)

    return fill


def _no_file(name: str, checkpoint: Any) -> None:
    if checkpoint is not None:
        raise SamplerError(f"sampler {name!r} needs no checkpoint (got {checkpoint}); leave it out")


def build_harmonic(checkpoint=None, *, preset: str = "cpu", device: str = "cpu", method=None, **options):
    """The ``harmonic`` sampler; ``method`` ``"harmonic"`` (default) or ``"biharmonic"``."""
    reject_options("harmonic", options, ("method",))
    _no_file("harmonic", checkpoint)
    method = method or "harmonic"
    fns = {"harmonic": harmonic_fill, "biharmonic": biharmonic_fill}
    if method not in fns:
        raise SamplerError(f"harmonic: method must be harmonic or biharmonic, got {method!r}")
    meta = {"kind": "sampler", "sampler": "harmonic", "model": "fill", "config": {"method": method}}
    return FillSampler(_per_image(fns[method]), name="harmonic", image_size=_image_size(preset), meta=meta)


def build_tv(checkpoint=None, *, preset: str = "cpu", device: str = "cpu", iterations=None, **options):
    """The ``tv`` sampler: the harmonic fill, then ``iterations`` primal–dual steps (300; 100 at ``tiny``)."""
    reject_options("tv", options, ("iterations",))
    _no_file("tv", checkpoint)
    its = TV_ITERATIONS.get(preset, 300) if iterations is None else int(iterations)
    if its < 1:
        raise SamplerError(f"tv: iterations must be >= 1, got {iterations!r}")
    meta = {
        "kind": "sampler",
        "sampler": "tv",
        "model": "fill",
        "config": {"iterations": its, "init": "harmonic"},
    }
    harmonic = _per_image(harmonic_fill)
    return FillSampler(
        lambda o, m: tv_fill(o, m, its, init=harmonic(o, m)),
        name="tv",
        image_size=_image_size(preset),
        meta=meta,
        device=device,
    )


# -- the mean image -----------------------------------------------------------------------------------
MEAN_MODEL = "mean-image"


def build_mean_image(images: torch.Tensor, out: str | Path, *, data: dict | None = None, **meta: Any) -> Path:
    """Save the mean of ``images`` ``(N, 1, S, S)`` as a ``sampler`` checkpoint ``OUT`` (kind ``mean``).

    ``data``/``meta`` (e.g. ``trained_on``) are recorded in the JSON like any checkpoint's.
    """
    from boed.runtime.checkpoints import save_checkpoint

    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3] or len(images) == 0:
        raise SamplerError(f"mean image: images must be (N, 1, S, S) with N >= 1, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise SamplerError("mean image: the images hold NaN or inf")
    size = images.shape[-1]
    fields = {
        "kind": "sampler",
        "sampler": "mean",
        "model": MEAN_MODEL,
        "config": {"image_size": size, "n_images": len(images)},
        "image_size": size,
        "data": data or {},
        **meta,
    }
    save_checkpoint(out, {"mean": images.mean(0)}, fields)
    return Path(out)


def build_mean(checkpoint, *, preset: str = "cpu", device: str = "cpu", **options):
    """The ``mean`` sampler from a mean-image checkpoint (:func:`build_mean_image`)."""
    from boed.runtime.checkpoints import checkpoint_paths, load_checkpoint

    reject_options("mean", options)
    ckpt = load_checkpoint(checkpoint, kind="sampler", device=device)
    sidecar = checkpoint_paths(ckpt.path)[1]
    if ckpt.meta.get("model") != MEAN_MODEL or "mean" not in ckpt.tensors:
        raise SamplerError(
            f"{sidecar}: not a mean-image file (model={ckpt.meta.get('model')!r}, sampler="
            f"{ckpt.meta.get('sampler')!r}); build one with generative.fills.build_mean_image"
        )
    mean = ckpt.tensors["mean"].float()
    if mean.ndim != 3 or mean.shape[0] != 1 or mean.shape[1] != mean.shape[2]:
        raise SamplerError(f"{ckpt.path}: mean must be (1, S, S), got {tuple(mean.shape)}")
    if not torch.isfinite(mean).all():
        raise SamplerError(f"{ckpt.path}: the mean image holds NaN or inf")
    fill = lambda o, m: mean.to(o.device).expand_as(o)  # noqa: E731
    return FillSampler(
        fill, name="mean", image_size=mean.shape[-1], sha256=ckpt.sha256, meta=ckpt.meta, device=device
    )
