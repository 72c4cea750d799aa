"""The evaluation's outputs: ``table.md`` / ``table.csv`` (samplers × metrics), ``settings.csv``
(every metric per mask setting), ``boed_summary.csv`` / ``boed_paired.csv``, Fig. 3-style curves
against the number of observed squares, the calibration rank histograms, sample grids of every
sampler on the same inputs, and a self-contained offline ``index.html`` (PNGs inlined)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from boed.report.build import _CSS

CURVES = (
    ("fid", "FID-n (classifier features)"),
    ("kid", "KID-n"),
    ("inception_score", "inception-score analogue"),
    ("div_feature", "diversity (feature L2)"),
    ("l1", "L1 on missing pixels"),
    ("gap_abs", "|g(v|x⊙m) − mean g(v|I)|"),
    ("rank_chi2", "rank-histogram χ²"),
)
MD_COLUMNS = (
    ("n_images", "n", "{:.0f}"),
    ("l1", "L1", "{:.4f}"),
    ("l1_best", "L1 best", "{:.4f}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("maem", "MAEM", "{:.3f}"),
    ("div_pixel", "div px", "{:.4f}"),
    ("div_feature", "div feat", "{:.3f}"),
    ("fid_agg", "FID-agg", "{:.3f}"),
    ("kid_agg", "KID-agg", "{:.4f}"),
    ("fid_holes", "FID holes", "{:.3f}"),
    ("inception_score", "IS", "{:.3f}"),
    ("rank_chi2", "rank χ²", "{:.1f}"),
    ("rank_p", "χ² p", "{:.2g}"),
    ("gap", "gap", "{:+.3f}"),
    ("gap_abs", "abs gap", "{:.3f}"),
    ("truth_bpd", "bits/dim", "{:.3f}"),
    ("truth_rank", "GT rank", "{:.2f}"),
    ("seconds_per_10", "s / 10", "{:.3f}"),
    ("peak_mib", "peak MiB", "{:.0f}"),
)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return spec.format(value)


def _ci(row: pd.Series, key: str, spec: str = "{:+.3f}") -> str:
    v = row.get(key, math.nan)
    if not isinstance(v, float) or not math.isfinite(v):
        return "–"
    lo, hi = row.get(f"{key}_lo", math.nan), row.get(f"{key}_hi", math.nan)
    return f"{spec.format(v)} [{spec.format(lo)}, {spec.format(hi)}]"


def boed_columns(
    headline: pd.DataFrame, summary: pd.DataFrame, paired: pd.DataFrame, scans: int
) -> pd.DataFrame:
    """``headline`` with the BOED columns after ``scans`` scans: accuracy, log loss (and hit rate
    when the summary has it) with CIs, and the paired accuracy / log-loss differences against
    ``random`` and against the reference sampler."""
    out = headline.copy()
    if summary is None or summary.empty:
        return out
    at = summary[summary["scans"] == scans].set_index("policy")
    extra = [k for k in ("hit_rate",) if k in at.columns]
    for key in ("accuracy", "log_loss", *extra):
        for suffix in ("", "_lo", "_hi"):
            col = f"{key}{suffix}"
            if col in at.columns:
                out[f"boed_{col}"] = out["sampler"].map(at[col])
    if paired is not None and len(paired):
        p = paired[paired["scans"] == scans]
        for ref, sub in p.groupby("reference"):
            sub = sub.set_index("policy")
            for key in ("accuracy", "log_loss"):
                for suffix in ("", "_lo", "_hi"):
                    out[f"d_{key}_vs_{ref}{suffix}"] = out["sampler"].map(sub[f"{key}{suffix}"])
            out[f"mcnemar_p_vs_{ref}"] = out["sampler"].map(sub["mcnemar_p"])
    return out


def markdown_table(table: pd.DataFrame, scans: int, reference: str) -> str:
    """The samplers × metrics table as Markdown (CIs in brackets)."""
    cols = [c for c in MD_COLUMNS if c[0] in table.columns]
    head = ["sampler", *(c[1] for c in cols)]
    boed = "boed_accuracy" in table.columns
    if boed:
        head += [f"acc@{scans}", "Δacc vs random", f"Δacc vs {reference}", f"log loss@{scans}"]
        if "boed_hit_rate" in table.columns:
            head.append(f"hit rate@{scans}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row["sampler"])] + [_fmt(row.get(k), spec) for k, _, spec in cols]
        if boed:
            cells += [
                _ci(row, "boed_accuracy", "{:.3f}"),
                _ci(row, "d_accuracy_vs_random"),
                _ci(row, f"d_accuracy_vs_{reference}"),
                _ci(row, "boed_log_loss", "{:.3f}"),
            ]
            if "boed_hit_rate" in table.columns:
                cells.append(_ci(row, "boed_hit_rate", "{:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(settings: pd.DataFrame, path: Path) -> Path:
    """Fig. 3-style panels: each metric against the number of observed squares, one line per sampler."""
    plt = _pyplot()
    sq = settings[settings["setting"].str.startswith("squares-")].copy()
    sq["k"] = sq["setting"].str.split("-").str[1].astype(int)
    cols = 4
    rows = math.ceil(len(CURVES) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(CURVES) :]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, CURVES, strict=False):
        for name, sub in sq.groupby("sampler", sort=False):
            sub = sub.sort_values("k")
            ax.plot(sub["k"], sub[key], marker="o", ms=3, label=name)
        if key in ("fid", "kid"):  # a bad fill is orders of magnitude off: keep the good ones visible
            ax.set_yscale("symlog", linthresh=1e-2 if key == "kid" else 1.0)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("observed squares", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ranks(headline: pd.DataFrame, path: Path) -> Path:
    """Calibration rank histograms (pooled over squares-0..5), one panel per sampler; the dashed
    line is the uniform count a sampler from the true posterior gives."""
    plt = _pyplot()
    k = len(headline)
    fig, axes = plt.subplots(1, k, figsize=(2.4 * k, 2.2), squeeze=False)
    for ax, (_, row) in zip(axes[0], headline.iterrows(), strict=True):
        counts = np.asarray(row["rank_hist"], dtype=float)
        ax.bar(np.arange(len(counts)), counts, color="#4a7ab5")
        ax.axhline(counts.sum() / len(counts), color="k", ls="--", lw=0.8)
        ax.set_title(f"{row['sampler']}  χ²={row['rank_chi2']:.0f}", fontsize=8)
        ax.set_xlabel("rank of truth", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_boed(summary: pd.DataFrame, path: Path) -> Path:
    """Accuracy and log loss of BOED with each sampler (and random) against the number of scans, 95 % CIs."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), squeeze=False)
    s = summary[summary["policy"] != "full-image"]
    for ax, key in zip(axes[0], ("accuracy", "log_loss"), strict=True):
        for name, sub in s.groupby("policy", sort=False):
            ax.plot(
                sub["scans"], sub[key], marker="o", ms=3, label=name, ls="--" if name == "random" else "-"
            )
            ax.fill_between(sub["scans"], sub[f"{key}_lo"], sub[f"{key}_hi"], alpha=0.08)
        ax.set_xlabel("scans", fontsize=8)
        ax.set_title(key.replace("_", " "), fontsize=9)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grid(grids: dict[str, dict[str, torch.Tensor]], path: Path) -> Path:
    """Every sampler on the same inputs: per (input image, setting) a row block with the truth,
    the observation and each sampler's completions (``grids[name]["completions"]`` ``(R, n, S, S)``,
    shared ``truth`` / ``mask`` ``(R, S, S)``)."""
    plt = _pyplot()
    names = list(grids)
    first = grids[names[0]]
    rows, n = first["completions"].shape[:2]
    cols = 2 + n
    fig, axes = plt.subplots(
        rows * len(names), cols, figsize=(1.0 * cols, 1.0 * rows * len(names)), squeeze=False
    )
    for r in range(rows):
        truth, mask = first["truth"][r], first["mask"][r]
        obs = torch.stack([truth * mask, truth * mask, truth * mask + 0.35 * (1 - mask)], -1).clamp(0, 1)
        for j, name in enumerate(names):
            line = axes[r * len(names) + j]
            panels = [truth, obs, *grids[name]["completions"][r]]
            for c, ax in enumerate(line):
                img = panels[c]
                ax.imshow(
                    img.numpy(),
                    cmap=None if img.dim() == 3 else "gray",
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
            line[0].set_ylabel(f"{name}\n{first['setting'][r]}", fontsize=5)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def _frame_html(df: pd.DataFrame, digits: int = 4) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.{digits}g}", border=0, escape=True)


def write_page(
    out: Path,
    *,
    title: str,
    meta: dict[str, Any],
    table_md: str,
    table: pd.DataFrame,
    settings: pd.DataFrame,
    figures: dict[str, Path],
    boed_summary: pd.DataFrame | None,
    paired: pd.DataFrame | None,
) -> Path:
    """``out/index.html``: everything of the evaluation on one self-contained page."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    parts.append(
        "<table class='meta'>"
        + "".join(
            f"<tr><th class='l'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in meta.items()
        )
        + "</table>"
    )
    parts.append("<h2>Samplers × metrics</h2><pre>" + html.escape(table_md) + "</pre>")
    labels = {
        "curves": "Fig. 3-style curves against the number of observed squares",
        "ranks": "Calibration: rank of the truth's target probability among the completions' "
        "(uniform = calibrated)",
        "boed": "BOED with each sampler: accuracy and log loss against scans (95 % bootstrap CIs)",
        "grid": "Sample grids: every sampler on the same inputs",
    }
    for key, path in figures.items():
        parts.append(f"<h2>{html.escape(labels.get(key, key))}</h2>{_img(path)}")
    if boed_summary is not None and not boed_summary.empty:
        parts.append("<h2>BOED summary (boed_summary.csv)</h2>" + _frame_html(boed_summary))
    if paired is not None and not paired.empty:
        parts.append("<h2>Paired differences (boed_paired.csv)</h2>" + _frame_html(paired))
    parts.append(
        "<h2>Every metric per mask setting (settings.csv)</h2>"
        + _frame_html(settings.drop(columns=["rank_hist"], errors="ignore"))
    )
    parts.append(
        "<h2>Headline table (table.csv)</h2>"
        + _frame_html(table.drop(columns=["rank_hist"], errors="ignore"))
    )
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
