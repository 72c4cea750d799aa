"""Build the report of a run (PNGs + a self-contained ``index.html``) from the store alone.

Everything is reported for the run's *target* (:func:`run_target`): one label of the classifier
(e.g. ``Any``, ``Mass`` or a folder's own ``big``), or ``all``, for which the metrics are
averaged over the target's labels (macro average: each metric of each label, then their mean;
a macro average has no bootstrap CIs here, its ``_lo``/``_hi`` columns are NaN).

Beside the summary (``summary.csv``: each metric with its 95 % bootstrap CI over images), the
report compares every policy with a reference policy (default ``random``) image by image
(``paired.csv``: differences with paired CIs and McNemar's exact test, :mod:`boed.report.stats`),
and shows what each decision's EIG rested on (``diagnostics.csv``: the EIG's standard error, the
completions' effective sample size and the sampler–classifier gap, :func:`decision_diagnostics`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from boed.eig import ALL, Target, resolve_target
from boed.policies import FULL_IMAGE
from boed.report.figures import plot_coverage, plot_performance, plot_session
from boed.report.metrics import summarise

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}
.meta td{text-align:left}.small{color:#666;font-size:.85em}
.warn{background:#fff4c2;border-left:4px solid #d9a400;padding:.4em .8em}
"""


def run_target(run: Any, label: str | None = None) -> Target:
    """The target a run was simulated for, resolved against the run's labels.

    Read from the ``runs.target`` column where the store has it, else from the run's config
    (``"any"`` for a config without one, as runs were before the target was configurable).
    ``label`` overrides it (any label of the run, or ``all``).
    """
    name = label or getattr(run, "target", None) or (run.config or {}).get("target") or "any"
    return resolve_target(name, list(run.labels))


def load_target_summary(
    store: Any, run_id: str, label: str | None = None
) -> tuple[Any, Target, pd.DataFrame]:
    """``(run record, target, summary table)`` for ``run_id``.

    The table is :func:`boed.report.metrics.summarise` of the target's label with a first column
    ``target`` (the target's name); for ``all`` the per-label tables are averaged (macro).
    """
    run = store.get_run(run_id)
    target = run_target(run, label)
    config = run.config or {}
    scans = int(config.get("scans", 5))
    policies = [p for p in config.get("policies", []) if p != FULL_IMAGE] or None
    if len(target.labels) == 1:
        summary = summarise(store.predictions(run_id, label=target.labels[0]), scans, policies)
    else:  # one query, then one summary per label
        predictions = store.predictions(run_id)
        by_label = {name: frame for name, frame in predictions.groupby("label", sort=False)}
        empty = predictions.iloc[:0]
        summary = _macro_mean(
            [summarise(by_label.get(name, empty), scans, policies, ci=False) for name in target.labels]
        )
    summary = _with_coverage(store, run_id, target, summary)
    summary.insert(0, "target", target.name)
    return run, target, summary


def _with_coverage(store: Any, run_id: str, target: Target, summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with the hit rate and the fraction observed (:mod:`boed.report.coverage`) of
    each policy and number of scans joined on (NaN for the full-image line, and for the hit rate
    where no session is positive and located)."""
    from boed.report.coverage import coverage_summary, load_coverage

    config = store.get_run(run_id).config or {}
    table = load_coverage(store, run_id, target.labels)
    located = coverage_summary(
        table,
        int(config.get("scans", 5)),
        int(config.get("patch_size", 16)),
        int(config.get("image_size", 64)),
    )
    return summary.merge(located, on=["policy", "scans"], how="left")


def load_summary(store: Any, run_id: str, label: str | None = None) -> tuple[Any, pd.DataFrame]:
    """``(run record, summary table)`` of the run's target (or ``label``); see :func:`load_target_summary`."""
    run, _, summary = load_target_summary(store, run_id, label)
    return run, summary


def _macro_mean(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean of the metrics of several labels' summaries, row by row (same policies and scans)."""
    first = tables[0]
    out = first.copy()
    for key in ("accuracy", "auroc", "entropy", "log_loss", "brier"):
        if key not in first:
            continue
        values = pd.concat([t[key].reset_index(drop=True) for t in tables], axis=1).to_numpy(float)
        with np.errstate(all="ignore"):
            known = ~np.isnan(values)
            total = np.where(known, values, 0.0).sum(1)
            out[key] = np.where(known.any(1), total / np.maximum(known.sum(1), 1), np.nan)
    return out


def load_paired(store: Any, run_id: str, reference: str = "random", label: str | None = None) -> pd.DataFrame:
    """Paired differences of every policy against ``reference`` for the run's one-label target
    (:func:`boed.report.metrics.compare`); empty for a multi-label target or without ``reference``."""
    from boed.report.metrics import compare

    run = store.get_run(run_id)
    target = run_target(run, label)
    config = run.config or {}
    if len(target.labels) != 1:
        return pd.DataFrame()
    policies = [p for p in config.get("policies", []) if p != FULL_IMAGE] or None
    table = compare(
        store.predictions(run_id, label=target.labels[0]), int(config.get("scans", 5)), reference, policies
    )
    if len(table):
        from boed.report.coverage import load_coverage, paired_coverage

        located = load_coverage(store, run_id, target.labels)
        extra = [paired_coverage(located, r.policy, reference, int(r.scans)) for r in table.itertuples()]
        table = pd.concat([table, pd.DataFrame(extra, index=table.index)], axis=1)
        table.insert(0, "target", target.name)
    return table


GAP_WARNING = 0.1  # mean |g(v | completions) − g(v | x⊙m)| above which the report flags the sampler


def decision_diagnostics(store: Any, run_id: str) -> pd.DataFrame:
    """Per policy and scan, the means over sessions of the decision diagnostics the store keeps
    (``boed.store.models.Step``): ``eig_se``, ``ess``, ``target_observed``,
    ``target_completions``, their ``gap`` (completions − observation) and ``abs_gap``. Only steps
    chosen from an EIG estimate; empty when there are none."""
    steps = store.steps(run_id)
    if "eig_se" not in steps.columns:  # a store without the diagnostics (an older reader or test double)
        return pd.DataFrame()
    steps = steps[steps["eig_se"].notna() | steps["target_completions"].notna()]
    if steps.empty:
        return pd.DataFrame()
    steps = steps.assign(
        gap=steps["target_completions"] - steps["target_observed"],
        abs_gap=(steps["target_completions"] - steps["target_observed"]).abs(),
    )
    keys = ["eig_se", "ess", "target_observed", "target_completions", "gap", "abs_gap"]
    table = steps.groupby(["policy", "step"], sort=False)[keys].mean().reset_index()
    table.insert(2, "n", steps.groupby(["policy", "step"], sort=False).size().to_numpy())
    return table.rename(columns={"step": "scans"})


def first_decision(store: Any, run_id: str) -> dict[str, Any] | None:
    """The run's shared first decision, read from step 1 of its ``boed`` sessions: ``location``
    ``(row, col)``, ``eig`` and its Monte Carlo standard error ``eig_se`` (nats), ``completions``
    (``first_completions`` of the run's config, else ``n_samples``), ``sessions`` it was used by;
    None without boed sessions. With the shared first decision every session's step 1 is equal."""
    steps = store.steps(run_id)
    if "eig_se" not in steps.columns:
        return None
    first = steps[(steps["policy"] == "boed") & (steps["step"] == 1) & steps["eig"].notna()]
    if first.empty:
        return None
    config = store.get_run(run_id).config or {}
    row = first.iloc[0]
    shared = bool(config.get("share_prior_decision", True))
    n = int(config.get("n_samples", 10))
    return {
        "location": (int(row["row"]), int(row["col"])),
        "eig": float(row["eig"]),
        "eig_se": float(row["eig_se"]),
        "completions": int(config.get("first_completions") or n) if shared else n,
        "sessions": int(len(first)),
        "shared": shared,
    }


def first_decision_line(decision: dict[str, Any] | None) -> str:
    """One line on the first BOED decision, or "" without one."""
    if decision is None:
        return ""
    shared = "shared by" if decision["shared"] else "of the first of"
    return (
        f"first BOED decision ({shared} {decision['sessions']} sessions, N = {decision['completions']} "
        f"completions): scan at {decision['location']}, EIG {decision['eig']:.4f} ± {decision['eig_se']:.4f} "
        "nats (Monte Carlo s.e.)"
    )


def diagnostics_html(table: pd.DataFrame) -> str:
    """The decision diagnostics table, with a warning when the sampler and classifier disagree."""
    if table.empty:
        return "<p class=small>No decision was made from an EIG estimate in this run.</p>"
    head = "".join(
        f"<th>{h}</th>"
        for h in ("scan", "n", "EIG s.e. (nats)", "ESS", "g(v | x⊙m)", "mean g(v | completion)", "gap")
    )
    rows = [
        f"<tr><td class=l>{html.escape(str(r.policy))}</td><td>{int(r.scans)}</td><td>{int(r.n)}</td>"
        f"<td>{_fmt(float(r.eig_se), 4)}</td><td>{_fmt(float(r.ess), 1)}</td>"
        f"<td>{_fmt(float(r.target_observed))}</td><td>{_fmt(float(r.target_completions))}</td>"
        f"<td>{float(r.gap):+.3f}</td></tr>"
        for r in table.itertuples()
    ]
    worst = float(table["abs_gap"].max())
    warn = (
        f"<p class=warn>warning: the classifier reads the sampler's completions differently from the "
        f"observation (mean |gap| up to {worst:.2f} at a scan): the EIG estimate (Eq. 17) assumes "
        "they agree, so it is biased here.</p>"
        if worst > GAP_WARNING
        else ""
    )
    return (
        "<p class=small>What each decision's EIG rests on: the Monte Carlo standard error at the chosen "
        "location, the effective sample size of the completions, and the classifier's target "
        "probability on the observation against its mean over the completions (they agree for an "
        "exact sampler; the gap is the bias of Eq. 17's plug-in).</p>"
        + warn
        + f"<table><tr><th class=l>policy</th>{head}</tr>{''.join(rows)}</table>"
    )


def paired_html(paired: pd.DataFrame) -> str:
    """Differences against the reference policy with their paired 95 % CIs and McNemar's p."""
    if paired.empty:
        return (
            "<p class=small>No paired comparison (no reference-policy sessions, or a multi-label target).</p>"
        )
    ref = html.escape(str(paired["reference"].iloc[0]))
    head = "".join(
        f"<th>{h}</th>"
        for h in ("scans", "pairs", "Δ accuracy [95% CI]", "McNemar p", "Δ AUROC", "Δ log loss", "Δ Brier")
        + (("Δ hit rate", "hit McNemar p", "Δ observed") if "hit_rate" in paired else ())
    )
    rows = []
    for policy, sub in paired.groupby("policy", sort=False):
        for r in sub.itertuples():
            cells = [
                str(int(r.scans)),
                str(int(r.n_pairs)),
                _ci(r.accuracy, r.accuracy_lo, r.accuracy_hi),
                _fmt(float(r.mcnemar_p)),
                _ci(r.auroc, r.auroc_lo, r.auroc_hi),
                _ci(r.log_loss, r.log_loss_lo, r.log_loss_hi),
                _ci(r.brier, r.brier_lo, r.brier_hi),
            ]
            if "hit_rate" in paired:
                cells += [
                    _ci(r.hit_rate, r.hit_rate_lo, r.hit_rate_hi)
                    + f" <span class=small>(n={int(r.hit_n)})</span>",
                    _fmt(float(r.hit_mcnemar_p)) if int(r.hit_n) else "–",
                    _ci(r.observed, r.observed_lo, r.observed_hi),
                ]
            rows.append(
                f"<tr><td class=l>{html.escape(policy)}</td>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
    return (
        f"<p class=small>Each policy minus <b>{ref}</b> on the same images (positive Δ accuracy / AUROC and "
        "negative Δ log loss / Brier favour the policy); a CI that excludes 0 is a difference beyond "
        "the image sample's noise.</p>"
        f"<table><tr><th class=l>policy</th>{head}</tr>{''.join(rows)}</table>"
    )


def _ci(value: float, lo: float, hi: float) -> str:
    if value is None or math.isnan(float(value)):
        return "–"
    if math.isnan(float(lo)):
        return _fmt(float(value))
    return f"{float(value):+.3f} [{float(lo):+.3f}, {float(hi):+.3f}]"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _with_ci(row: Any, key: str) -> str:
    value, lo, hi = (float(getattr(row, k, math.nan)) for k in (key, f"{key}_lo", f"{key}_hi"))
    if math.isnan(value) or math.isnan(lo):
        return _fmt(value)
    return f"{value:.3f} <span class=small>[{lo:.3f}, {hi:.3f}]</span>"


def summary_html(summary: pd.DataFrame) -> str:
    """One small table per metric (accuracy, AUROC, entropy, log loss, Brier): policies x number of
    scans, each value with its 95 % bootstrap CI."""
    curves = summary[summary["policy"] != FULL_IMAGE]
    full = summary[summary["policy"] == FULL_IMAGE]
    scans = sorted(int(s) for s in curves["scans"].unique()) if len(curves) else []
    parts = []
    titles = (
        ("accuracy", "Accuracy"),
        ("auroc", "AUROC"),
        ("entropy", "Mean entropy (nats)"),
        ("log_loss", "Log loss (nats, lower is better)"),
        ("brier", "Brier score (lower is better)"),
        ("hit_rate", "Hit rate: a scan has covered a finding of the target (positive located sessions)"),
        ("observed", "Fraction of the image observed"),
    )
    for key, title in titles:
        if key not in summary or (key == "hit_rate" and not summary[key].notna().any()):
            continue
        head = "".join(f"<th>{s}</th>" for s in scans)
        rows = []
        for policy, sub in curves.groupby("policy", sort=False):
            cells = "".join(f"<td>{_with_ci(r, key)}</td>" for r in sub.sort_values("scans").itertuples())
            n = int(sub["hit_n"].fillna(0).iloc[0]) if key == "hit_rate" else int(sub["n"].iloc[0])
            rows.append(f"<tr><td class=l>{html.escape(policy)} (n={n})</td>{cells}</tr>")
        if key == "observed" and "observed_disjoint" in curves and len(curves):
            first = curves[curves["policy"] == curves["policy"].iloc[0]].sort_values("scans")
            cells = "".join(f"<td>{float(v):.3f}</td>" for v in first["observed_disjoint"])
            rows.append(f"<tr><td class=l>non-overlapping scans, min(1, k·p²/S²)</td>{cells}</tr>")
        if not full.empty and key not in ("hit_rate", "observed"):  # no scans, nothing located
            rows.append(
                f"<tr><td class=l>full image (n={int(full['n'].iloc[0])})</td>"
                f"<td colspan={max(len(scans), 1)}>{_with_ci(next(full.itertuples()), key)}</td></tr>"
            )
        parts.append(
            f"<h3>{title}</h3><table><tr><th class=l>policy \\ scans</th>{head}</tr>{''.join(rows)}</table>"
        )
    return "\n".join(parts)


def build_report(
    store: Any, run_id: str, out: str | Path, *, label: str | None = None, max_sessions: int = 8
) -> Path:
    """Write ``fig5.png``, ``sessions/*.png`` and ``index.html`` for ``run_id`` into ``out``.

    Everything comes from the store (predictions, sessions, steps, saved arrays), so the report
    can be rebuilt at any time with ``boed report RUN_ID``. Metrics are those of the run's
    target (``label``: another label of the run). Returns the path of ``index.html``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run, target, summary = load_target_summary(store, run_id, label)
    config = run.config or {}
    patch = int(config.get("patch_size", 16))
    plot_performance(summary, out / "fig5.png", target.title)
    coverage_png = plot_coverage(summary, out / "coverage.png", target.title)
    summary.to_csv(out / "summary.csv", index=False)
    paired = load_paired(store, run_id, label=label)
    paired.to_csv(out / "paired.csv", index=False)
    diagnostics = decision_diagnostics(store, run_id)
    diagnostics.to_csv(out / "diagnostics.csv", index=False)

    sessions = store.sessions(run_id)
    figures = []
    candidates = sessions[(sessions["policy"] == "boed") & (sessions["status"] == "done")].sort_values(
        "image_index"
    )
    for rec in candidates.head(max_sessions).itertuples():
        arrays = store.load_arrays(int(rec.session_id))
        if not arrays:
            continue
        name = f"sessions/session-{int(rec.session_id)}.png"
        truth = _truth(rec.true_labels, list(run.labels), target)
        if plot_session(arrays, out / name, patch, f"image {rec.image_id} ({truth})"):
            figures.append((rec, name))

    counts = sessions.groupby(["policy", "status"]).size().unstack(fill_value=0)
    failed = sessions[sessions["status"] == "failed"]
    meta_rows = {
        "run id": run.run_id,
        "status": run.status,
        "created": str(run.created_at),
        "finished": str(run.finished_at),
        "sampler": f"{run.sampler} ({(run.sampler_sha256 or '–')[:12]})",
        "classifier": f"{run.classifier} ({(run.classifier_sha256 or '–')[:12]})",
        "dataset": str(run.dataset),
        "target": target.title,
        "seed": str(run.seed),
        "code version": run.code_version,
        "config": ", ".join(f"{k}={v}" for k, v in config.items()),
        "timings": ", ".join(f"{k}={v}" for k, v in (run.timings or {}).items()),
    }
    body = [
        f"<h1>BOED run {html.escape(run.run_id)}</h1>",
        "<table class=meta>"
        + "".join(
            f"<tr><th class=l>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in meta_rows.items()
        )
        + "</table>",
        *(
            f"<p class=warn>warning: {html.escape(str(line))}</p>"
            for line in ((run.dataset or {}).get("warnings") or [])
        ),
        f"<h2>{html.escape(target.title)} vs number of scans (Fig. 5)</h2>",
        '<img src="fig5.png" alt="performance vs number of scans">',
        "<p class=small>Values in brackets: 95% bootstrap confidence intervals over images.</p>",
        summary_html(summary),
        *(
            ['<h3>Where the scans went</h3><img src="coverage.png" alt="hit rate and fraction observed">']
            if coverage_png is not None
            else []
        ),
        "<h2>Paired comparison</h2>",
        paired_html(paired),
        "<h2>Decision diagnostics</h2>",
        f"<p>{html.escape(first_decision_line(first_decision(store, run_id)))}</p>",
        diagnostics_html(diagnostics),
        "<h2>Sessions</h2>" + counts.to_html(border=0),
    ]
    if len(failed):
        body.append(
            "<h3>Failed sessions</h3><table><tr><th>image</th><th>policy</th><th class=l>error</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(str(r.image_id))}</td><td>{html.escape(r.policy)}</td>"
                f"<td class=l>{html.escape(str(r.error))}</td></tr>"
                for r in failed.itertuples()
            )
            + "</table>"
        )
    body.append(
        "<h2>EIG visualisations (Fig. 6)</h2><p class=small>Each row is one step: what was seen "
        "before it; completions drawn by the sampler, each overlaid with its information gain per "
        "candidate location (blue positive, red negative); the EIG over the mean completion; the "
        "observation after scanning the location with the largest EIG (yellow).</p>"
    )
    if not figures:
        body.append("<p>No session saved visualisation arrays.</p>")
    for rec, name in figures:
        body.append(
            f"<h3>image {html.escape(str(rec.image_id))} (session {int(rec.session_id)})</h3>"
            f'<img src="{name}" alt="EIG visualisation">'
        )
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>BOED run {html.escape(run.run_id)}"
        f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page)
    return index


def _truth(true_labels: Any, labels: list[str], target: Target) -> str:
    """``big = 1`` for a one-label target; ``all: positive Mass, Nodule`` (or ``none``) for ``all``."""

    def value(name: str) -> float:
        try:
            return float(list(true_labels)[labels.index(name)])
        except (ValueError, IndexError, TypeError):
            return math.nan

    if target.name != ALL:
        v = value(target.name)
        return f"{target.name} = {'?' if math.isnan(v) else int(v)}"
    values = {name: value(name) for name in target.labels}
    positive = [name for name, v in values.items() if v == 1]
    unknown = sum(math.isnan(v) for v in values.values())
    text = f"all: positive {', '.join(positive)}" if positive else "all: none positive"
    return text + (f", {unknown} unknown" if unknown else "")
