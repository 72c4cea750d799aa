"""Observation-mask distributions, seeded and vectorised.

Every function returns float32 ``(n, 1, S, S)`` masks in {0, 1} with 1 = observed, built on the CPU
from the ``torch.Generator`` it is given (``None`` uses torch's global generator, so it is not
reproducible). No Python loop runs over images or pixels.

- :func:`aipo_masks`: the AIPO training distribution (Section 4 of Harvey et al., "Image Completion via
  Inference in Deep Generative Models" (2021)): all pixels hidden except ``k ~ Uniform{0..5}`` squares of
  side 35% of the image at uniform positions.
- :func:`classifier_masks`: the same with 25% squares (appendix B.4 of the same paper), matching the
  scans of the BOED experiments.
- :func:`blob_masks`: irregular random blobs, Algorithm 1 of Dupont & Suresha, "Probabilistic Semantic
  Inpainting with Pixel Constrained CNNs" (2019).
- :func:`centre_square_masks` (a centred hole: the "holes"/"centre" setting) and
  :func:`three_squares_masks`: evaluation masks for samplers.
- :func:`grid_locations`, :func:`patch_masks`: the scan grid of the controller and the masks of
  its scans.

``MASKS`` maps names to functions that can all be called as ``MASKS[name](n, size, generator=g)``:
the named mask distributions a sampler evaluation chooses from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "MASKS",
    "aipo_masks",
    "blob_masks",
    "centre_square_masks",
    "classifier_masks",
    "grid_locations",
    "patch_masks",
    "squares_masks",
    "three_squares_masks",
]


def _side(size: int, side_frac: float) -> int:
    if not 0.0 < side_frac <= 1.0:
        raise ValueError(f"side_frac must be in (0, 1], got {side_frac}")
    return max(1, min(size, round(side_frac * size)))


def _boxes_to_masks(
    rows: torch.Tensor, cols: torch.Tensor, side: int, size: int, keep: torch.Tensor
) -> torch.Tensor:
    """Union of ``K`` squares per image: ``rows``, ``cols``, ``keep`` are ``(n, K)``; -> ``(n, 1, S, S)``."""
    ar = torch.arange(size)
    in_rows = ((ar >= rows[..., None]) & (ar < rows[..., None] + side) & keep[..., None]).float()  # (n, K, S)
    in_cols = ((ar >= cols[..., None]) & (ar < cols[..., None] + side)).float()  # (n, K, S)
    covered = torch.bmm(in_rows.transpose(1, 2), in_cols)  # (n, S, S): how many squares cover a pixel
    return (covered > 0).float().unsqueeze(1)


def _random_squares(counts: torch.Tensor, max_count: int, size: int, side: int, generator) -> torch.Tensor:
    n = counts.shape[0]
    if max_count == 0 or n == 0:
        return torch.zeros(n, 1, size, size)
    high = size - side + 1
    rows = torch.randint(0, high, (n, max_count), generator=generator)
    cols = torch.randint(0, high, (n, max_count), generator=generator)
    keep = torch.arange(max_count) < counts[:, None]
    return _boxes_to_masks(rows, cols, side, size, keep)


def squares_masks(
    n: int, size: int, n_squares: int = 3, side_frac: float = 0.35, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Masks observing exactly ``n_squares`` squares (side ``round(side_frac * size)``) each.

    Squares lie fully inside the image at uniform integer positions and may overlap.
    """
    if n_squares < 0:
        raise ValueError(f"n_squares must be >= 0, got {n_squares}")
    side = _side(size, side_frac)
    counts = torch.full((n,), n_squares, dtype=torch.long)
    return _random_squares(counts, n_squares, size, side, generator)


def _uniform_count_squares(n: int, size: int, side_frac: float, max_squares: int, generator) -> torch.Tensor:
    counts = torch.randint(0, max_squares + 1, (n,), generator=generator)
    return _random_squares(counts, max_squares, size, _side(size, side_frac), generator)


def aipo_masks(
    n: int, size: int, generator: torch.Generator | None = None, max_squares: int = 5
) -> torch.Tensor:
    """AIPO training masks: ``k ~ Uniform{0..max_squares}`` observed squares of side 35% of the image."""
    return _uniform_count_squares(n, size, 0.35, max_squares, generator)


def classifier_masks(
    n: int, size: int, generator: torch.Generator | None = None, max_squares: int = 5
) -> torch.Tensor:
    """Classifier training masks: ``k ~ Uniform{0..max_squares}`` observed squares of side 25%."""
    return _uniform_count_squares(n, size, 0.25, max_squares, generator)


def three_squares_masks(
    n: int, size: int, generator: torch.Generator | None = None, side_frac: float = 0.35
) -> torch.Tensor:
    """Exactly three observed squares of side 35% per image (an AIPO evaluation setting)."""
    return squares_masks(n, size, 3, side_frac, generator)


def centre_square_masks(
    n: int, size: int, generator: torch.Generator | None = None, side_frac: float = 0.5
) -> torch.Tensor:
    """Everything observed except a centred square hole of side ``side_frac`` (classic inpainting).

    Deterministic; ``generator`` is accepted for a uniform signature.
    """
    side = _side(size, side_frac)
    start = (size - side) // 2
    mask = torch.ones(n, 1, size, size)
    mask[:, :, start : start + side, start : start + side] = 0.0
    return mask


def blob_masks(
    n: int,
    size: int,
    generator: torch.Generator | None = None,
    max_num_blobs: int = 4,
    iter_min: int | None = None,
    iter_max: int | None = None,
) -> torch.Tensor:
    """Observed random blobs, Algorithm 1 (appendix D) of Dupont & Suresha, "Probabilistic Semantic
    Inpainting with Pixel Constrained CNNs" (2019).

    ``num_blobs ~ Uniform{1..max_num_blobs}``; each blob starts at a uniform pixel and grows for
    ``num_iters ~ Uniform{iter_min..iter_max}`` iterations: every 4-neighbour of every frontier pixel
    joins the blob (and the next frontier) with probability 1/2. The paper used ``iter_min=2,
    iter_max=7`` on 32-pixel images; the defaults scale these with ``size / 32`` so blobs cover the
    same fraction of any image. Vectorised over images: all blobs share one frontier map that holds
    each frontier pixel's remaining growth steps, so a pixel reached twice in one step joins once
    (with probability 3/4) where the paper's list would hold it twice; the blob statistics are
    otherwise the same.
    """
    scale = size / 32
    iter_min = max(1, round(2 * scale)) if iter_min is None else iter_min
    iter_max = max(iter_min, round(7 * scale)) if iter_max is None else iter_max
    if max_num_blobs < 1 or iter_min < 0 or iter_max < iter_min:
        raise ValueError("need max_num_blobs >= 1 and 0 <= iter_min <= iter_max")
    num_blobs = torch.randint(1, max_num_blobs + 1, (n,), generator=generator)
    num_iters = torch.randint(iter_min, iter_max + 1, (n, max_num_blobs), generator=generator)
    seeds = torch.randint(0, size * size, (n, max_num_blobs), generator=generator)
    active = torch.arange(max_num_blobs) < num_blobs[:, None]  # (n, K)
    # life[p] = 1 + growth steps left for the frontier at pixel p (0: not on the frontier)
    life = torch.zeros(n, size * size, dtype=torch.long)
    life.scatter_reduce_(1, seeds, torch.where(active, num_iters + 1, 0), reduce="amax")
    life = life.view(n, size, size).to(torch.uint8)
    blobs = life > 0
    for _ in range(iter_max):
        if n == 0 or not bool((life > 1).any()):
            break
        child = F.pad(life, (1, 1, 1, 1)).clamp_(min=1).sub_(1)  # what a neighbour would pass on
        coins = torch.randint(0, 16, (n, size, size), generator=generator, dtype=torch.uint8)
        nxt = torch.zeros_like(life)
        # each of the 4 neighbour directions has its own coin (one bit of ``coins``)
        for bit, (dr, dc) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
            src = child[:, 1 - dr : 1 - dr + size, 1 - dc : 1 - dc + size]  # from the neighbour p - (dr, dc)
            nxt = torch.maximum(nxt, src * ((coins >> bit) & 1))
        life = nxt
        blobs |= life > 0
    return blobs.unsqueeze(1).float()


def grid_locations(size: int, patch: int, grid: int = 17) -> torch.Tensor:
    """``(grid * grid, 2)`` long tensor of evenly spaced valid top-left (row, col), row-major."""
    if patch > size or patch < 1:
        raise ValueError(f"patch {patch} must be in [1, {size}]")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    steps = (
        torch.linspace(0, size - patch, grid).round().long() if grid > 1 else torch.zeros(1, dtype=torch.long)
    )
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def patch_masks(locations: torch.Tensor, size: int, patch: int) -> torch.Tensor:
    """One mask per location: ``locations (K, 2)`` top-left (row, col) -> ``(K, 1, S, S)``."""
    locations = torch.as_tensor(locations, dtype=torch.long).reshape(-1, 2)
    k = locations.shape[0]
    keep = torch.ones(k, 1, dtype=torch.bool)
    return _boxes_to_masks(locations[:, :1], locations[:, 1:], patch, size, keep)


MASKS: dict[str, Callable[..., torch.Tensor]] = {
    "aipo": aipo_masks,
    "classifier": classifier_masks,
    "squares": squares_masks,
    "three_squares": three_squares_masks,
    "blob": blob_masks,
    "centre_square": centre_square_masks,
}
