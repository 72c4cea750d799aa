"""Metrics of a simulation, computed from the store's long prediction table (pure functions).

``predictions`` is ``Store.predictions(run_id, label=...)``: one row per (session, step, label)
with ``policy, image_id, step, prob, truth``. A session that stopped early (stopping rule) keeps
its last prediction for the remaining scans. The full-image reference (policy ``full-image``) has a
single step and is reported as one line.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from boed.policies import FULL_IMAGE


def _known(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=float)
    keep = ~np.isnan(truth) & ~np.isnan(scores)
    return scores[keep], truth[keep] > 0.5


def binary_auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``) over the known labels; NaN with one
    class only (an AUROC is undefined there, and a report shows it as a gap)."""
    from sklearn.metrics import roc_auc_score

    scores, truth = _known(scores, truth)
    if truth.all() or not truth.any():
        return math.nan
    return float(roc_auc_score(truth, scores))


def accuracy(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of known labels predicted right, ``prob >= threshold`` counting as positive (the
    convention of ``classifiers.metrics.accuracy``; scikit-learn's ``accuracy_score``); NaN when
    none is known."""
    from sklearn.metrics import accuracy_score

    probs, truth = _known(probs, truth)
    if not truth.size:
        return math.nan
    return float(accuracy_score(truth, probs >= threshold))


def mean_binary_entropy(probs: np.ndarray) -> float:
    """Mean binary entropy (nats) of the predicted probabilities."""
    p = np.clip(np.asarray(probs, dtype=float), 1e-7, 1 - 1e-7)
    p = p[~np.isnan(p)]
    if not p.size:
        return math.nan
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def trajectories(predictions: pd.DataFrame, scans: int) -> pd.DataFrame:
    """One row per scanning session: ``session_id, policy, image_id, truth, scans_used, 0..scans``.

    Columns ``0..scans`` hold the probability after that many scans, carried forward after an
    early stop. The full-image sessions are left out (see :func:`full_image_predictions`).
    """
    df = predictions[predictions["policy"] != FULL_IMAGE]
    if df.empty:
        return pd.DataFrame(
            columns=["session_id", "policy", "image_id", "truth", "scans_used", *range(scans + 1)]
        )
    wide = df.pivot_table(index="session_id", columns="step", values="prob", aggfunc="first")
    wide = wide.reindex(columns=range(scans + 1))
    used = wide.notna().sum(axis=1) - 1
    wide = wide.ffill(axis=1)
    meta = df.groupby("session_id").agg(
        policy=("policy", "first"), image_id=("image_id", "first"), truth=("truth", "first")
    )
    out = meta.join(wide).reset_index()
    out.insert(4, "scans_used", used.reindex(out["session_id"]).to_numpy())
    return out


def full_image_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """``image_id, prob, truth`` of the full-image reference sessions."""
    df = predictions[(predictions["policy"] == FULL_IMAGE) & (predictions["step"] == 0)]
    return df[["image_id", "prob", "truth"]].reset_index(drop=True)


COLUMNS = ["policy", "scans", "n", "accuracy", "auroc", "entropy", "log_loss", "brier", "scans_used"]


def _row(policy: str, scans: float, probs: np.ndarray, truth: np.ndarray, used: float, ci: bool) -> dict:
    row = dict(
        policy=policy,
        scans=scans,
        n=len(probs),
        accuracy=accuracy(probs, truth),
        auroc=binary_auroc(probs, truth),
        entropy=mean_binary_entropy(probs),
        log_loss=math.nan,
        brier=math.nan,
        scans_used=used,
    )
    from boed.report.stats import METRICS, metric_cis

    with_ci = metric_cis(probs, truth)
    row["log_loss"], row["brier"] = with_ci["log_loss"], with_ci["brier"]
    for key in METRICS:
        lo, hi = (with_ci[f"{key}_lo"], with_ci[f"{key}_hi"]) if ci else (math.nan, math.nan)
        row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi
    return row


def summarise(
    predictions: pd.DataFrame, scans: int, policies: list[str] | None = None, *, ci: bool = True
) -> pd.DataFrame:
    """Accuracy, AUROC, mean entropy, log loss and Brier score per policy and number of scans.

    Returns a long table ``policy, scans, n, accuracy, auroc, entropy, log_loss, brier,
    scans_used`` followed by ``<metric>_lo`` / ``<metric>_hi``, the 95 % bootstrap CI over images
    of each metric (:mod:`boed.report.stats`; NaN with ``ci=False``). ``scans`` is NaN and
    ``policy == "full-image"`` for the reference line.
    """
    from boed.report.stats import METRICS

    traj = trajectories(predictions, scans)
    order = policies or list(dict.fromkeys(traj["policy"]))
    rows = []
    for policy in order:
        sub = traj[traj["policy"] == policy]
        if sub.empty:
            continue
        truth = sub["truth"].to_numpy(float)
        used = float(sub["scans_used"].mean())
        for t in range(scans + 1):
            rows.append(_row(policy, t, sub[t].to_numpy(float), truth, used, ci))
    full = full_image_predictions(predictions)
    if not full.empty:
        rows.append(
            _row(
                FULL_IMAGE,
                math.nan,
                full["prob"].to_numpy(float),
                full["truth"].to_numpy(float),
                math.nan,
                ci,
            )
        )
    bounds = [f"{k}_{end}" for k in METRICS for end in ("lo", "hi")]
    return pd.DataFrame(rows, columns=COLUMNS + bounds)


def compare(
    predictions: pd.DataFrame, scans: int, reference: str = "random", policies: list[str] | None = None
) -> pd.DataFrame:
    """Paired differences ``policy − reference`` per number of scans (``stats.paired_differences``).

    One row per (policy ≠ reference, scans): ``policy, reference, scans, n_pairs``, each metric's
    difference with its paired 95 % CI (``<metric>``, ``_lo``, ``_hi``), and McNemar's exact test
    of the accuracies (``mcnemar_p``, ``a_only``, ``b_only``). Empty when the run has no
    ``reference`` sessions.
    """
    from boed.report.stats import paired_differences

    traj = trajectories(predictions, scans)
    order = [p for p in (policies or list(dict.fromkeys(traj["policy"]))) if p != reference]
    ref = traj[traj["policy"] == reference]
    rows = []
    if not ref.empty:
        for policy in order:
            sub = traj[traj["policy"] == policy]
            if sub.empty:
                continue
            for t in range(scans + 1):
                a = sub[["image_id", "truth"]].assign(prob=sub[t].to_numpy(float))
                b = ref[["image_id", "truth"]].assign(prob=ref[t].to_numpy(float))
                rows.append({"policy": policy, "reference": reference, "scans": t} | paired_differences(a, b))
    return pd.DataFrame(rows)


SPREAD_METRICS = ("accuracy", "auroc", "entropy", "log_loss", "brier", "hit_rate", "observed")


def seed_spread(summaries: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The spread of a run repeated over seeds (``boed simulate --seeds``).

    ``summaries``: ``{seed: summary table}`` (:func:`boed.report.load_target_summary` of each
    seed's run). Returns one row per (policy, scans, metric): ``policy, scans, metric, n_seeds,
    mean, sd`` (the sample standard deviation across seeds, ``ddof = 1``; NaN for one seed) and
    ``seed_<s>``, each seed's value. Seeds where a value is NaN (an AUROC with one class) are left
    out of its mean and sd and counted out of ``n_seeds``.
    """
    long = []
    for seed, table in summaries.items():
        keys = [m for m in SPREAD_METRICS if m in table]
        melted = table.melt(id_vars=["policy", "scans"], value_vars=keys, var_name="metric")
        long.append(melted.assign(seed=int(seed)))
    columns = ["policy", "scans", "metric", "n_seeds", "mean", "sd"]
    if not long:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(long, ignore_index=True)
    frame["scans"] = frame["scans"].fillna(-1.0)  # the full-image line: pivot keeps NaN keys apart
    wide = frame.pivot_table(
        index=["policy", "scans", "metric"], columns="seed", values="value", aggfunc="first", dropna=False
    )
    wide = wide.reindex(columns=sorted(summaries))
    values = wide.to_numpy(float)
    known = ~np.isnan(values)
    count = known.sum(1)
    filled = np.where(known, values, 0.0)
    with np.errstate(all="ignore"):
        mean = filled.sum(1) / count
        var = (np.where(known, values - mean[:, None], 0.0) ** 2).sum(1) / (count - 1)
    out = pd.DataFrame(
        {"n_seeds": count, "mean": mean, "sd": np.where(count >= 2, np.sqrt(var), np.nan)}, index=wide.index
    )
    for seed in wide.columns:
        out[f"seed_{seed}"] = wide[seed]
    out = out.reset_index()
    out["scans"] = out["scans"].replace(-1.0, math.nan)
    order = {p: i for i, p in enumerate(dict.fromkeys(pd.concat(list(summaries.values()))["policy"]))}
    metric_order = {m: i for i, m in enumerate(SPREAD_METRICS)}
    out = out[out["n_seeds"] > 0].sort_values(
        ["policy", "metric", "scans"],
        key=lambda c: (
            c.map(order) if c.name == "policy" else c.map(metric_order) if c.name == "metric" else c
        ),
        na_position="last",
    )
    return out.reset_index(drop=True)
