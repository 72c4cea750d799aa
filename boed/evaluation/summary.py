"""Tables of an evaluation: one row per (sampler, setting) and one headline row per sampler.

Everything here is computed from the merged per-image arrays of :mod:`boed.evaluation.engine`
(so shards merge before any distance is taken). The headline pools the Fig. 3 settings
``squares-0..5`` (FID-agg: the test images against the union of one completion per image from
each of them, as Fig. 3 of Harvey, Naderiparizi & Wood 2021 defines it); ``fid_holes`` is the
``holes`` setting's FID.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from boed.evaluation import metrics as M
from boed.evaluation.engine import FIDELITY_KEYS, SQUARE_SETTINGS, SamplerResult, Scorers


def _nanmean(t: torch.Tensor) -> float:
    t = t.double().flatten()
    t = t[~torch.isnan(t)]
    return float(t.mean()) if len(t) else math.nan


def _fidelity(arrays: dict[str, torch.Tensor], rows: list[int], scorers: Scorers) -> dict[str, float]:
    """Mean (weighted for weighted samplers) and best-of-n of each fidelity key over ``rows`` settings."""
    values = {k: arrays[f"fid_{k}"][rows].flatten(0, 1).T for k in FIDELITY_KEYS}  # (n, S·B)
    lw = arrays["log_weights"][rows].flatten(0, 1).T
    return scorers.summarise(values, None if torch.isnan(lw).any() else lw)


def _distances(real: torch.Tensor, fake: torch.Tensor, seed: int) -> dict[str, float]:
    if min(len(real), len(fake)) < 2:
        return {"fid": math.nan, "kid": math.nan, "kid_std": math.nan}
    kid, kid_std = M.kernel_distance(real, fake, seed=seed)
    return {"fid": M.frechet_distance(real, fake), "kid": kid, "kid_std": kid_std}


def _calibration(arrays: dict[str, torch.Tensor], rows: list[int], n: int) -> dict[str, Any]:
    counts = M.rank_histogram(arrays["rank"][rows].long(), n)
    chi2, dof, p = M.rank_chi2(counts)
    return {"rank_chi2": chi2, "rank_dof": dof, "rank_p": p, "rank_hist": counts.tolist()}


def _gap(arrays: dict[str, torch.Tensor], rows: list[int], t: int) -> dict[str, float]:
    obs = arrays["obs_probs"][rows][..., t].flatten()  # (S·B,)
    comp = arrays["probs"][rows][..., t].flatten(0, 1).T  # (n, S·B)
    lw = arrays["log_weights"][rows].flatten(0, 1).T
    gap = M.posterior_gap(obs, comp, None if torch.isnan(lw).any() else lw)
    return {"gap": _nanmean(gap), "gap_abs": _nanmean(gap.abs())}


def _block(result: SamplerResult, rows: list[int], t: int, scorers: Scorers, seed: int) -> dict[str, Any]:
    a = result.arrays
    n = a["probs"].shape[2]
    real = a["real_features"]
    fake = a["features"][rows].flatten(0, 1)
    out: dict[str, Any] = {"n_images": len(a["index"]), "n_samples": n}
    out["observed_frac"] = _nanmean(a["observed_frac"][rows])
    out |= _fidelity(a, rows, scorers)
    out["div_pixel"] = _nanmean(a["div_pixel"][rows]) if n > 1 else 0.0
    out["div_feature"] = _nanmean(a["div_feature"][rows]) if n > 1 else 0.0
    out |= _distances(real, fake, seed)
    out["inception_score"] = _nanmean(M.inception_score(a["probs"][rows].flatten(0, 1).transpose(0, 1)))
    out |= _calibration(a, rows, n)
    out |= _gap(a, rows, t)
    out["truth_bpd"] = _nanmean(a["truth_bpd"][rows])
    out["truth_rank"] = _nanmean(a["truth_rank"][rows])
    return out


def setting_rows(
    result: SamplerResult, settings: tuple[str, ...], t: int, scorers: Scorers, seed: int = 0
) -> list[dict]:
    """One row per setting: ``sampler, setting`` and every metric of :func:`_block` on it."""
    return [
        {"sampler": result.name, "setting": s} | _block(result, [i], t, scorers, seed)
        for i, s in enumerate(settings)
    ]


def headline(
    result: SamplerResult, settings: tuple[str, ...], t: int, scorers: Scorers, seed: int = 0
) -> dict:
    """The sampler's headline row: metrics pooled over ``squares-0..5`` (``*_agg``), FID/KID on
    ``holes`` when evaluated, and the cost."""
    rows = [i for i, s in enumerate(settings) if s in SQUARE_SETTINGS] or list(range(len(settings)))
    out = {"sampler": result.name} | _block(result, rows, t, scorers, seed)
    out["fid_agg"], out["kid_agg"], out["kid_agg_std"] = out.pop("fid"), out.pop("kid"), out.pop("kid_std")
    if "holes" in settings:
        d = _distances(
            result.arrays["real_features"], result.arrays["features"][settings.index("holes")], seed
        )
        out["fid_holes"], out["kid_holes"] = d["fid"], d["kid"]
    out |= {k: result.cost.get(k, math.nan) for k in ("seconds_per_10", "peak_mib")}
    out["deterministic"] = result.deterministic
    out["notes"] = "; ".join(result.notes)
    return out
