"""Retrieval importance sampling: completions are training images, weighted by how well they fit.

The "stochastic image completion" of Harvey, Teng & Wood, "Near-optimal glimpse sequences for
improved hard attention neural network training" (2019), the sampler Harvey, Naderiparizi & Wood
(2021, appendix B.4) replace by AIPO: images are retrieved from a database of training images that
roughly match the observed pixels. Here the database is the prior, ``p(I) = Σ_j π_j δ(I − I_j)``
(``π`` uniform unless the index records entry weights ``log_prior``, e.g. an exhaustive list of
the images of a discrete world with their prior masses), and the observation model is Gaussian
pixel noise of standard deviation ``σ`` (``noise_std``), optionally with a small unknown shift
``t`` (``|t_row|, |t_col| ≤ shift`` px, uniform, edge pixels replicated):

    log p(x_o | j, t) = −½ Σ_{p observed} (x_p − shift_t(I_j)_p)² / σ²   (+ a constant)
    log p(x_o | j)    = logsumexp_t log p(x_o | j, t) − log T                (T = (2·shift + 1)²)

The posterior over database entries is ``p(j | x_o) ∝ π_j p(x_o | j)``; a completion is the entry
``I_j`` moved by a shift drawn from ``p(t | j, x_o)``, observed pixels pasted. ``n`` draws come
from a *proposal* ``q(j)`` and carry the self-normalised importance weights
``w ∝ π_j p(x_o | j) / q(j)`` (``Completions.log_weights``, normalised so ``logsumexp = 0``):

* ``"pca"`` (default when the index holds a PCA basis): ``q(j) ∝ π_j exp(−½ Σ_obs (x_p − r_{j,p})²
  / (σ² + v))`` with ``r_j`` the entry's PCA reconstruction and ``v`` the PCA's mean residual
  variance per pixel; computed in the K-dimensional code space (``K²`` per entry instead of one
  pass over every pixel of every entry and shift); the exact likelihood is then evaluated only
  for the ``n`` drawn entries.
* ``"prior"`` (default without PCA): ``q = π`` (likelihood weighting).
* ``"exact"``: ``q`` = the posterior itself computed over the whole database in float32 (the
  weights then only correct float32 rounding and are ≈ uniform).
* ``"exhaustive"``: no draw: every entry once (``n`` must be the database size), weights = the
  posterior. The EIG of Eq. 17 is then an exact expectation over the database posterior
  (tests/generative/test_retrieval.py checks it against exact mutual information in the toy world).

``Completions.info``: ``"ess"`` ``(B,)`` the effective sample size ``(Σw)² / Σw²`` of the draws
(Kish), ``"distinct"`` ``(B,)`` how many different database entries they are. The ESS falls as
scans accumulate (few database images fit many observed pixels): the weakness of retrieval that
Harvey et al. (2021) name and that ``benchmarks/baselines_i.py`` measures.

The index (:func:`build_index`, ``boed build-retrieval-index``) is a ``sampler`` checkpoint (model
``retrieval-index``): tensors ``images`` ``(M, 1, S, S)`` float16, optionally ``log_prior`` ``(M,)``
and ``pca_mean`` ``(D,)``, ``pca_basis`` ``(K, D)``, ``pca_codes`` ``(M, K)``, ``pca_residual``
``()``; its JSON records ``noise_std`` and ``shift`` (the sampler's defaults, overridable) and
the data description of the images, like any checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from generative.errors import SamplerError
from generative.family import SamplerBase, reject_options

MODEL = "retrieval-index"
PROPOSALS = ("pca", "prior", "exact", "exhaustive")
DEFAULT_NOISE_STD = 0.1
CHUNK = 1024  # database entries per matrix product in a full pass


# -- the index -------------------------------------------------------------------------------------
def build_index(
    images: torch.Tensor,
    out: str | Path,
    *,
    pca: int | None = None,
    noise_std: float = DEFAULT_NOISE_STD,
    shift: int = 0,
    log_prior: torch.Tensor | None = None,
    data: dict | None = None,
    seed: int = 0,
    **meta: Any,
) -> Path:
    """Save a retrieval index of ``images`` ``(M, 1, S, S)`` as the ``sampler`` checkpoint ``OUT``.

    ``pca``: keep a K-component PCA (``torch.svd_lowrank``, randomised, seeded by ``seed``) for the
    proposal; ``log_prior`` ``(M,)``: entry weights (default uniform); ``data`` and ``meta``
    (e.g. ``trained_on``) go into the JSON.
    """
    from boed.runtime.checkpoints import save_checkpoint

    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3] or len(images) < 1:
        raise SamplerError(
            f"retrieval index: images must be (M, 1, S, S) with M >= 1, got {tuple(images.shape)}"
        )
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise SamplerError("retrieval index: images must be finite and in [0, 1]")
    if not (isinstance(noise_std, (int, float)) and noise_std > 0 and math.isfinite(noise_std)):
        raise SamplerError(f"retrieval index: --noise-std must be a positive number, got {noise_std!r}")
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise SamplerError(f"retrieval index: --shift must be an integer >= 0, got {shift!r}")
    m, size = len(images), images.shape[-1]
    if shift >= size:
        raise SamplerError(f"retrieval index: --shift {shift} must be smaller than the image size {size}")
    tensors: dict[str, torch.Tensor] = {"images": images.half()}
    if log_prior is not None:
        log_prior = torch.as_tensor(log_prior, dtype=torch.float32).reshape(-1)
        if len(log_prior) != m or torch.isnan(log_prior).any() or (log_prior == math.inf).any():
            raise SamplerError(f"retrieval index: log_prior must be ({m},) without NaN or +inf")
        tensors["log_prior"] = log_prior
    if pca is not None:
        d = size * size
        if isinstance(pca, bool) or not isinstance(pca, int) or not 1 <= pca <= min(m, d):
            raise SamplerError(
                f"retrieval index: --pca must be an integer in [1, {min(m, d)}] (images, pixels)"
            )
        flat = tensors["images"].float().flatten(1)  # (M, D)
        mean = flat.mean(0)
        centred = flat - mean
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if pca + 10 < min(m, d):  # randomised SVD (Halko et al. 2011): torch.svd_lowrank
                _, _, v = torch.svd_lowrank(centred, q=pca + 10, niter=4)
                basis = v[:, :pca].T.contiguous()
            else:
                basis = torch.linalg.svd(centred, full_matrices=False).Vh[:pca].contiguous()
        codes = centred @ basis.T  # (M, K)
        residual = ((centred - codes @ basis) ** 2).mean()
        tensors |= {"pca_mean": mean, "pca_basis": basis, "pca_codes": codes, "pca_residual": residual}
    config = {"image_size": size, "n_images": m, "pca": pca, "noise_std": float(noise_std), "shift": shift}
    fields = {
        "kind": "sampler",
        "sampler": "retrieval",
        "model": MODEL,
        "config": config,
        "image_size": size,
        "data": data or {},
        **meta,
    }
    save_checkpoint(out, tensors, fields)
    return Path(out)


# -- likelihoods -------------------------------------------------------------------------------------
def shifts(shift: int) -> list[tuple[int, int]]:
    """The ``T = (2·shift + 1)²`` shifts ``(d_row, d_col)``, row-major; ``(0, 0)`` is the middle one."""
    r = range(-shift, shift + 1)
    return [(a, b) for a in r for b in r]


def shifted(images: torch.Tensor, d: tuple[int, int], shift: int) -> torch.Tensor:
    """``images`` ``(M, 1, S, S)`` moved by ``d`` px (down/right for positive d; edges replicated)."""
    if shift == 0:
        return images
    size = images.shape[-1]
    padded = torch.nn.functional.pad(images, (shift,) * 4, mode="replicate")
    r0, c0 = shift - d[0], shift - d[1]
    return padded[..., r0 : r0 + size, c0 : c0 + size]


def log_likelihoods(
    candidates: torch.Tensor,
    observed: torch.Tensor,
    mask: torch.Tensor,
    noise_std: float,
    shift: int = 0,
    dtype: torch.dtype = torch.float64,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """``log p(x_o | j, t)`` (constant dropped) of every candidate, image and shift, ``(M, B, T)``.

    ``candidates`` ``(M, 1, S, S)``; ``observed``, ``mask`` ``(B, 1, S, S)``. Uses
    ``Σ_obs (x − c)² = Σ m x² − 2 (m x)·c + m·c²`` as two matrix products per shift and chunk.
    """
    m_ = mask.flatten(1).to(dtype).T  # (D, B)
    mx = (observed * mask).flatten(1).to(dtype).T  # (D, B)
    xx = (mx * mx).sum(0)  # (B,)  (observed*mask squared = m x^2 for binary m)
    out = []
    for i in range(0, len(candidates), chunk):
        cand = candidates[i : i + chunk].to(dtype)
        per_shift = []
        for d in shifts(shift):
            c = shifted(cand, d, shift).flatten(1)  # (M_c, D)
            ssd = xx - 2 * (c @ mx) + (c * c) @ m_  # (M_c, B)
            per_shift.append(ssd.clamp_min(0))
        out.append(torch.stack(per_shift, -1))
    ssd = torch.cat(out, 0)
    return -0.5 * ssd / noise_std**2


def marginal(ll: torch.Tensor) -> torch.Tensor:
    """``log p(x_o | j)``: the shifts of ``ll`` ``(..., T)`` marginalised (uniform), ``(...)``."""
    return torch.logsumexp(ll, -1) - math.log(ll.shape[-1])


def kish_ess(log_weights: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``(Σw)² / Σw²`` over dim 0 of ``log_weights`` ``(n, B)`` -> ``(B,)``."""
    w = torch.softmax(log_weights.double(), 0)
    return (1.0 / (w * w).sum(0)).float()


# -- the sampler -----------------------------------------------------------------------------------------
class RetrievalSampler(SamplerBase):
    """boed's Sampler over a retrieval index (see the module docstring for the weights).

    ``sample(observed, mask, n, generator)`` → ``Completions(images (n, B, 1, S, S),
    log_weights (n, B), info={"ess": (B,), "distinct": (B,)})``; all draws from ``generator``.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        *,
        noise_std: float,
        shift: int,
        proposal: str,
        sha256: str | None,
        meta: dict | None,
        device: Any = "cpu",
    ):
        images = tensors["images"]
        super().__init__(
            name="retrieval", image_size=images.shape[-1], sha256=sha256, meta=meta, device=device
        )
        self.images = images.to(self.device)  # (M, 1, S, S) float16
        m = len(images)
        prior = tensors.get("log_prior")
        self.log_prior = (torch.zeros(m, dtype=torch.float64) if prior is None else prior.double()).to(
            self.device
        )
        self.log_prior = self.log_prior - torch.logsumexp(self.log_prior, 0)
        self.pca = {k: tensors[k].to(self.device) for k in tensors if k.startswith("pca_")} or None
        self.noise_std, self.shift, self.proposal = float(noise_std), int(shift), proposal

    def __len__(self) -> int:
        return len(self.images)

    # log q(j) of every entry for each image: (M, B)
    def _log_proposal(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        prior = self.log_prior[:, None]
        if self.proposal == "prior":
            return prior.expand(-1, observed.shape[0])
        if self.proposal == "exact":
            ll = marginal(
                log_likelihoods(self.images, observed, mask, self.noise_std, self.shift, torch.float32)
            )
            return torch.log_softmax(prior + ll.double(), 0)
        return torch.log_softmax(prior + self._pca_log_likelihood(observed, mask), 0)

    def _pca_log_likelihood(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``−½ Σ_obs (x − r_j)² / (σ² + v)`` of every entry's PCA reconstruction ``r_j``, ``(M, B)``."""
        mu, u, z = (
            self.pca["pca_mean"].double(),
            self.pca["pca_basis"].double(),
            self.pca["pca_codes"].double(),
        )
        var = self.noise_std**2 + float(self.pca["pca_residual"])
        m = mask.flatten(1).double()  # (B, D)
        x = (observed * mask).flatten(1).double()
        e = x - m * mu  # (B, D): masked residual of the observation about the mean
        ue = e @ u.T  # (B, K)
        gram = torch.einsum("kd,bd,ld->bkl", u, m, u)  # (B, K, K)
        # Σ_obs (x − μ − zU)² = Σ_obs e² − 2 z·(U e) + zᵀ (U diag(m) Uᵀ) z
        quad = torch.einsum("jk,bkl,jl->jb", z, gram, z)
        ssd = (e * e).sum(1)[None] - 2 * z @ ue.T + quad
        return -0.5 * ssd.clamp_min(0) / var

    def complete(self, observed, mask, n, generator):
        from boed.protocols import Completions

        b, m = observed.shape[0], len(self)
        if self.proposal == "exhaustive":
            if n != m:
                raise SamplerError(
                    f"retrieval: the exhaustive proposal returns every one of the {m} database images; "
                    f"n must be {m}, got {n}"
                )
            index = torch.arange(m, device=self.device)[:, None].expand(m, b)
            log_q = None
        else:
            log_q_all = self._log_proposal(observed, mask)  # (M, B)
            index = torch.multinomial(
                torch.softmax(log_q_all, 0).T.float(), n, replacement=True, generator=generator
            ).T
            log_q = log_q_all.gather(0, index)  # (n, B)
        images, log_w = [], []
        for i in range(b):
            cand = self.images[index[:, i]].float()  # (n, 1, S, S)
            ll = log_likelihoods(cand, observed[i : i + 1], mask[i : i + 1], self.noise_std, self.shift)[:, 0]
            log_p = self.log_prior[index[:, i]] + marginal(ll)  # (n,)
            log_w.append(log_p if log_q is None else log_p - log_q[:, i])
            images.append(self._shift_draw(cand, ll, generator))
        lw = torch.stack(log_w, 1)  # (n, B)
        lw = lw - torch.logsumexp(lw, 0, keepdim=True)
        distinct = torch.tensor([float(len(torch.unique(index[:, i]))) for i in range(b)])
        info = {"ess": kish_ess(lw), "distinct": distinct}
        return Completions(images=torch.stack(images, 1), log_weights=lw.float(), info=info)

    def _shift_draw(self, cand: torch.Tensor, ll: torch.Tensor, generator) -> torch.Tensor:
        """Each candidate moved by a shift drawn from ``p(t | j, x_o)`` (``ll`` ``(n, T)``)."""
        if self.shift == 0:
            return cand
        t = torch.multinomial(torch.softmax(ll, -1).float(), 1, generator=generator)[:, 0]
        options = shifts(self.shift)
        return torch.stack(
            [shifted(c[None], options[int(k)], self.shift)[0] for c, k in zip(cand, t, strict=True)]
        )


def build(
    checkpoint,
    *,
    preset: str = "cpu",
    device: str = "cpu",
    noise_std=None,
    shift=None,
    proposal=None,
    **options,
):
    """The ``retrieval`` sampler from an index (:func:`build_index`); options override its defaults."""
    from boed.runtime.checkpoints import checkpoint_paths, load_checkpoint

    reject_options("retrieval", options, ("noise_std", "shift", "proposal"))
    ckpt = load_checkpoint(checkpoint, kind="sampler", device=device)
    sidecar = checkpoint_paths(ckpt.path)[1]
    if ckpt.meta.get("model") != MODEL:
        raise SamplerError(
            f"{sidecar}: not a retrieval index (model={ckpt.meta.get('model')!r}); build one with "
            "`boed build-retrieval-index`"
        )
    t = ckpt.tensors
    images = t.get("images")
    if images is None or images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise SamplerError(f"{ckpt.path}: the index has no (M, 1, S, S) tensor 'images'")
    bad = [k for k, v in t.items() if v.is_floating_point() and torch.isnan(v).any()]
    if bad:
        raise SamplerError(f"{ckpt.path}: NaN in {bad[0]}")
    config = ckpt.config
    sigma = config.get("noise_std", DEFAULT_NOISE_STD) if noise_std is None else noise_std
    if not (
        isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0 and math.isfinite(sigma)
    ):
        raise SamplerError(f"retrieval: noise_std must be a positive number, got {sigma!r}")
    sh = config.get("shift", 0) if shift is None else shift
    if isinstance(sh, bool) or not isinstance(sh, int) or not 0 <= sh < images.shape[-1]:
        raise SamplerError(f"retrieval: shift must be an integer in [0, {images.shape[-1]}), got {sh!r}")
    has_pca = all(k in t for k in ("pca_mean", "pca_basis", "pca_codes", "pca_residual"))
    prop = proposal or ("pca" if has_pca else "prior")
    if prop not in PROPOSALS:
        raise SamplerError(f"retrieval: proposal must be one of {', '.join(PROPOSALS)}, got {prop!r}")
    if prop == "pca" and not has_pca:
        raise SamplerError(f"{ckpt.path}: proposal 'pca' needs an index built with --pca K")
    return RetrievalSampler(
        t,
        noise_std=float(sigma),
        shift=int(sh),
        proposal=prop,
        sha256=ckpt.sha256,
        meta=ckpt.meta,
        device=device,
    )
