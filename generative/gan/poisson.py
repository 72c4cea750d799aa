"""Poisson blending of a completion into the observed image: Eq. 6 of Yeh et al., "Semantic Image
Inpainting with Deep Generative Models" (2017), Eq. 9 of Vitoria et al., "Semantic image inpainting
through improved Wasserstein generative adversarial networks" (2018), after Pérez, Gangnet & Blake,
"Poisson Image Editing" (2003), Eq. 7.

    x̂ = argmin_x ‖∇x − ∇g‖²  subject to  x_i = y_i where M_i = 1

with ``g = G(ẑ)`` the generator's image, ``y`` the observation and ``M`` the mask (1 = observed).
Discretised on the 4-neighbour grid, the minimum over the hole pixels ``H`` solves, for every
``p ∈ H`` (Pérez et al. Eq. 7 with the guidance ``v_pq = g_p − g_q``):

    |N_p| x_p − Σ_{q ∈ N_p ∩ H} x_q = Σ_{q ∈ N_p \\ H} y_q + Σ_{q ∈ N_p} (g_p − g_q)

where ``N_p`` are the neighbours of ``p`` inside the image: at the image border there is no term,
i.e. the natural (Neumann) boundary of the least-squares problem. This is the exact minimiser of the
discrete Eq. 6 (``tests/generative/test_poisson.py`` checks it against a dense least-squares solve
and against analytic cases). The system is sparse, symmetric positive definite wherever a hole
component touches an observed pixel; it is solved exactly by a sparse LU factorisation
(``scipy.sparse.linalg.splu``), once per distinct mask and for all completions of that mask at once
(many right-hand sides).

A hole component that touches no observed pixel (e.g. nothing observed) has no boundary values:
its problem only fixes ``x`` up to a constant, ``x = g + c``; we take ``c = 0`` (``x = g``).
"""

from __future__ import annotations

import numpy as np
import torch

_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _neighbour_index(h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each of the 4 directions: (valid (H, W) bool, flat index of the neighbour (H, W))."""
    rows, cols = np.mgrid[0:h, 0:w]
    out = []
    for dr, dc in _OFFSETS:
        r, c = rows + dr, cols + dc
        valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        out.append((valid, np.clip(r, 0, h - 1) * w + np.clip(c, 0, w - 1)))
    return out


def _free_components(hole: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Hole pixels in 4-connected components without an observed neighbour, ``(H, W)`` bool."""
    from scipy import ndimage

    labels, count = ndimage.label(hole)  # 4-connectivity (the default structure)
    if count == 0:
        return np.zeros_like(hole)
    touching = ndimage.binary_dilation(observed) & hole
    anchored = np.zeros(count + 1, dtype=bool)
    anchored[np.unique(labels[touching])] = True
    anchored[0] = True  # label 0 is "not a hole"
    return ~anchored[labels]


def poisson_blend_numpy(guide: np.ndarray, observed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Eq. 6 for ``k`` guides sharing one mask.

    Args:
        guide: ``(k, H, W)`` the generator's images ``g``.
        observed: ``(k, H, W)`` or ``(H, W)`` the observation ``y`` (only observed pixels are read).
        mask: ``(H, W)`` 1 = observed.

    Returns:
        ``(k, H, W)`` float64: ``y`` on observed pixels, the Poisson solution in the hole.
    """
    from scipy import sparse
    from scipy.sparse.linalg import splu

    guide = np.asarray(guide, dtype=np.float64)
    k, h, w = guide.shape
    obs = np.broadcast_to(np.asarray(observed, dtype=np.float64), (k, h, w))
    known = np.asarray(mask) > 0.5
    out = np.where(known, obs, guide).copy()
    hole = ~known
    free = _free_components(hole, known)
    unknown = hole & ~free  # solved for; free components keep g (see the module docstring)
    if not unknown.any():
        return out
    index = -np.ones(h * w, dtype=np.int64)
    cells = np.flatnonzero(unknown.ravel())
    index[cells] = np.arange(len(cells))
    flat_g = guide.reshape(k, -1)
    flat_y = obs.reshape(k, -1)
    diag = np.zeros(len(cells))
    rhs = np.zeros((len(cells), k))
    rows, cols = [], []
    for valid, nb in _neighbour_index(h, w):
        v = valid.ravel()[cells]
        p, q = cells[v], nb.ravel()[cells][v]
        ip = index[p]
        diag[ip] += 1
        rhs[ip] += (flat_g[:, p] - flat_g[:, q]).T  # guidance g_p − g_q
        inside = index[q] >= 0
        rows.append(ip[inside])
        cols.append(index[q][inside])
        boundary = ~inside  # q observed: its value y_q moves to the right-hand side
        np.add.at(rhs, ip[boundary], flat_y[:, q[boundary]].T)
    n = len(cells)
    a = sparse.csc_matrix(
        (
            np.concatenate([diag, -np.ones(sum(len(r) for r in rows))]),
            (np.concatenate([np.arange(n), *rows]), np.concatenate([np.arange(n), *cols])),
        ),
        shape=(n, n),
    )
    solution = splu(a).solve(rhs)  # (n, k)
    out.reshape(k, -1)[:, cells] = solution.T
    return out


def poisson_blend(guide: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Poisson-blend completions into their observations (Eq. 6 / Eq. 9), batched.

    Args:
        guide: ``(n, B, 1, H, W)`` generator images ``G(ẑ)`` (any range; [0, 1] here).
        observed: ``(B, 1, H, W)`` the observations ``y``.
        mask: ``(B, 1, H, W)`` 1 = observed.

    Returns:
        ``(n, B, 1, H, W)`` blended images (same dtype/device as ``guide``): exactly ``y`` on the
        observed pixels. One sparse factorisation per image, shared by its ``n`` completions.
    """
    n, b = guide.shape[:2]
    g = guide.detach().double().cpu().numpy()
    y = observed.detach().double().cpu().numpy()
    m = mask.detach().cpu().numpy()
    out = np.empty_like(g)
    for j in range(b):
        out[:, j, 0] = poisson_blend_numpy(g[:, j, 0], y[j, 0], m[j, 0])
    return torch.from_numpy(out).to(device=guide.device, dtype=guide.dtype)
