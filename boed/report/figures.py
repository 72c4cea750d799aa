"""Figures of the report: Fig. 5 (performance vs scans) and Fig. 6 (the EIG at work).

As in Harvey, Naderiparizi & Wood, "Image Completion via Inference in Deep Generative Models" (2021):
Fig. 5 plots the accuracy of the prediction of the run's target (the paper's ``Any``; here
whichever label the run targeted) against the number of scans per policy; Fig. 6 shows, for each
step, the observation so far, several completions each overlaid with its information-gain map,
the EIG map (over the mean completion) and the observation after scanning the chosen location.
IG/EIG maps use a diverging colormap centred on 0: blue = positive, red = negative (an IG can be
negative; the EIG should not be). matplotlib is imported inside the functions with the Agg backend.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from boed.policies import FULL_IMAGE

_METRICS = (("accuracy", "accuracy"), ("auroc", "AUROC"), ("entropy", "mean entropy (nats)"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_performance(summary: pd.DataFrame, path: Path, label: str) -> Path:
    """Fig. 5: accuracy, AUROC and entropy of ``label`` (the target's title) vs number of scans,
    one line per policy with its 95 % bootstrap CI as a band; each panel's title starts with
    ``label``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    curves = summary[summary["policy"] != FULL_IMAGE]
    full = summary[summary["policy"] == FULL_IMAGE]
    for ax, (key, title) in zip(axes, _METRICS, strict=True):
        for policy, sub in curves.groupby("policy", sort=False):
            (line,) = ax.plot(sub["scans"], sub[key], marker="o", label=policy)
            lo, hi = f"{key}_lo", f"{key}_hi"
            if lo in sub and sub[lo].notna().any():  # the 95% bootstrap CI as a band
                ax.fill_between(sub["scans"], sub[lo], sub[hi], color=line.get_color(), alpha=0.15, lw=0)
        if not full.empty and not math.isnan(float(full[key].iloc[0])):
            ax.axhline(float(full[key].iloc[0]), color="k", ls="--", lw=1, label="full image")
        ax.set_xlabel("number of scans")
        ax.set_title(f"{label}: {title}")
        ax.grid(alpha=0.3)
        if len(curves):
            ax.set_xticks(sorted(curves["scans"].unique()))
    if axes[0].get_legend_handles_labels()[0]:  # nothing to plot when every session failed
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_coverage(summary: pd.DataFrame, path: Path, label: str) -> Path | None:
    """Where the scans went: the hit rate on ``label``'s located findings (when the run has
    positive located sessions) and the fraction of the image observed vs number of scans, one
    line per policy with its 95 % bootstrap CI as a band; the fraction observed also shows
    non-overlapping scans, ``min(1, k p² / S²)`` (dashed). None when the summary has neither."""
    curves = summary[summary["policy"] != FULL_IMAGE]
    if "observed" not in curves or curves.empty:
        return None
    panels = [("observed", "fraction of the image observed")]
    if curves["hit_rate"].notna().any():
        panels.insert(0, ("hit_rate", "hit rate (a scan covered a finding)"))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for policy, sub in curves.groupby("policy", sort=False):
            (line,) = ax.plot(sub["scans"], sub[key], marker="o", label=policy)
            if sub[f"{key}_lo"].notna().any():
                ax.fill_between(
                    sub["scans"], sub[f"{key}_lo"], sub[f"{key}_hi"], color=line.get_color(), alpha=0.15, lw=0
                )
        if key == "observed":
            first = curves[curves["policy"] == curves["policy"].iloc[0]]
            ax.plot(first["scans"], first["observed_disjoint"], "k--", lw=1, label="no overlap")
        ax.set_xlabel("number of scans")
        ax.set_title(f"{label}: {title}" if key == "hit_rate" else title)
        ax.set_xticks(sorted(curves["scans"].unique()))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _overlay(ax, image, values, patch, vmax, title=None):
    size = image.shape[-1]
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=(0, size, size, 0))
    if values is not None:
        g = values.shape[-1]
        step = (size - patch) / (g - 1) if g > 1 else size - patch
        lo, hi = patch / 2 - step / 2, size - patch / 2 + step / 2
        ax.imshow(_signed_rgba(values, vmax), extent=(lo, hi, hi, lo), interpolation="nearest")
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _signed_rgba(values: np.ndarray, vmax: float) -> np.ndarray:
    """Blue for positive, red for negative, opacity growing with |value| (0 is transparent)."""
    from matplotlib import colormaps

    v = np.clip(np.asarray(values, dtype=float) / vmax, -1, 1)
    rgba = colormaps["RdBu"]((v + 1) / 2)
    rgba[..., 3] = 0.85 * np.abs(v) ** 0.7
    return rgba


def _observation(observed, mask):
    """Observed pixels in grey, unseen ones tinted, as an RGB image."""
    rgb = np.repeat(observed.astype(float)[..., None], 3, axis=-1)
    unseen = mask < 0.5
    rgb[unseen] = [0.25, 0.2, 0.35]
    return rgb


def plot_session(
    arrays: dict[tuple[int, str], np.ndarray], path: Path, patch: int, title: str = ""
) -> Path | None:
    """Fig. 6 for one session from its stored arrays (``Store.load_arrays``); None if it has none."""
    steps = sorted({s for s, name in arrays if name == "eig"})
    if not steps:
        return None
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    k = max(arrays[(s, "completions")].shape[0] for s in steps)
    cols = k + 3
    fig, axes = plt.subplots(len(steps), cols, figsize=(1.6 * cols, 1.95 * len(steps)), squeeze=False)
    for row, s in zip(axes, steps, strict=True):
        obs, mask = arrays[(s, "observed")].astype(float), arrays[(s, "mask")].astype(float)
        comps, ig, eig = arrays[(s, "completions")].astype(float), arrays[(s, "ig")], arrays[(s, "eig")]
        r, c = (int(v) for v in arrays[(s, "location")])
        vmax = float(max(np.abs(ig).max(), np.abs(eig).max(), 1e-9))
        row[0].imshow(_observation(obs, mask), interpolation="nearest")
        row[0].set_title(f"t={s}: seen so far", fontsize=8)
        for j in range(k):
            if j < comps.shape[0]:
                _overlay(
                    row[1 + j],
                    comps[j],
                    ig[j],
                    patch,
                    vmax,
                    f"completion {j + 1} + IG" if s == steps[0] else None,
                )
            else:
                row[1 + j].axis("off")
        mean = arrays.get((s, "mean_completion"), comps.mean(0)).astype(float)
        _overlay(row[k + 1], mean, eig, patch, vmax, f"EIG (max {eig.max():.3g})")
        after = arrays.get((s, "observed_after"))
        after_mask = np.maximum(mask, 0)
        after_mask[r : r + patch, c : c + patch] = 1
        row[k + 2].imshow(
            _observation(after.astype(float) if after is not None else obs, after_mask),
            interpolation="nearest",
        )
        row[k + 2].add_patch(Rectangle((c - 0.5, r - 0.5), patch, patch, fill=False, ec="yellow", lw=1.5))
        row[k + 2].set_title(f"scan at ({r}, {c})", fontsize=8)
        for ax in (row[0], row[k + 2]):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
