"""Benchmark: the target evaluation of issue 10 on held-out v2 phantoms (default 500 test images).

Runs ``boed.simulate.run_simulation`` (the code behind ``boed simulate``) with the shipped
``cpu``-preset classifier and AIPO sampler (or the checkpoints given) on the first ``--images``
images of the v2 phantom *test* split (seed 0: no image the shipped checkpoints were trained or
validated on), policies ``boed`` and ``random`` plus the full-image line, into an SQLite file
store, so an interrupted run keeps every finished session and ``--resume`` continues it. The
analysis uses only the images on which every policy finished (the pairs are complete).

Targets, each checked at every number of scans k = 2..5 and printed pass / fail:

- accuracy: BOED − random > 0 with the paired 95 % bootstrap CI above 0
  (:func:`boed.report.metrics.compare`, i.e. :func:`boed.report.stats.paired_differences`);
- log loss: BOED − random < 0 with the paired CI below 0;
- hit rate (:mod:`boed.report.coverage`: a positive image's finding covered by a scan by scan k):
  BOED's above random's (the point estimate; its paired CI is reported beside it);
- by scan 5 BOED closes at least half of random's distance to the full-image line, for accuracy
  and log loss: ``(BOED_5 − random_5) / (full − random_5) >= 0.5``.

Writes ``--json`` (default ``benchmarks/results/eval_500.json``) with the configuration, the
checkpoints' sha256, the per-policy summary with CIs, the paired table, the verdicts and the
decision diagnostics per scan (EIG standard error and the sampler-classifier gap,
:func:`boed.report.build.decision_diagnostics`).

    .venv/bin/python benchmarks/eval_500.py [--images 500] [--batch-episodes 8] [--threads 1]
        [--runtime eager|onnx] [--store runs/eval_500.db] [--resume] [--analyse-only]

``--runtime onnx`` classifies on ONNX Runtime (the decisions agree with eager PyTorch's; see
``classifiers.runtime``), about twice as fast; the run's config records it and ``--resume`` keeps
the run's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

KS = (2, 3, 4, 5)
POLICIES = ("boed", "random")
REFERENCE = "random"


def closed_fraction(boed: float, random: float, full: float) -> float:
    """Fraction of random's distance to the full-image line that BOED closes (NaN when none)."""
    gap = full - random
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        return math.nan
    return (boed - random) / gap


def complete_images(predictions: pd.DataFrame, policies: tuple[str, ...]) -> set[str]:
    """Image ids on which every policy in ``policies`` (and the full-image line) has predictions."""
    from boed.policies import FULL_IMAGE

    have = predictions.groupby("image_id")["policy"].agg(set)
    want = {*policies, FULL_IMAGE}
    return {str(i) for i, got in have.items() if want <= got}


def verdicts(summary: pd.DataFrame, paired: pd.DataFrame) -> list[dict]:
    """The targets (module docstring) from a summary (``summarise`` + hit rates) and the paired
    table (``compare`` + ``paired_coverage``): one ``{target, scans, diff, lo, hi, pass}`` each."""

    def value(policy: str, k: float, key: str) -> float:
        if policy == "full-image":
            rows = summary[summary["policy"] == policy]
        else:
            rows = summary[(summary["policy"] == policy) & (summary["scans"] == k)]
        return float(rows[key].iloc[0]) if len(rows) else math.nan

    checks = []
    for k in KS:
        row = paired[(paired["policy"] == "boed") & (paired["scans"] == k)]
        if row.empty:
            continue
        r = row.iloc[0]
        checks.append(
            {"target": "accuracy CI > 0", "scans": k, "diff": r["accuracy"], "lo": r["accuracy_lo"],
             "hi": r["accuracy_hi"], "pass": bool(r["accuracy_lo"] > 0)}
        )  # fmt: skip
        checks.append(
            {"target": "log loss CI < 0", "scans": k, "diff": r["log_loss"], "lo": r["log_loss_lo"],
             "hi": r["log_loss_hi"], "pass": bool(r["log_loss_hi"] < 0)}
        )  # fmt: skip
        checks.append(
            {"target": "hit rate above random", "scans": k, "diff": r["hit_rate"], "lo": r["hit_rate_lo"],
             "hi": r["hit_rate_hi"], "pass": bool(r["hit_rate"] > 0)}
        )  # fmt: skip
    for key, label_ in (("accuracy", "accuracy"), ("log_loss", "log loss")):
        frac = closed_fraction(
            value("boed", 5, key), value("random", 5, key), value("full-image", math.nan, key)
        )
        checks.append(
            {"target": f"closes >= half of the gap to full-image ({label_}, scan 5)", "scans": 5,
             "diff": frac, "lo": math.nan, "hi": math.nan, "pass": bool(frac >= 0.5)}
        )  # fmt: skip
    return checks


def analyse(store, run_id: str, scans: int = 5) -> dict:
    """Summary, paired table and verdicts of a run (restricted to its complete images)."""
    from boed.eig import resolve_target
    from boed.report.coverage import coverage_summary, load_coverage, paired_coverage
    from boed.report.metrics import compare, summarise

    run = store.get_run(run_id)
    config = run.config or {}
    target = resolve_target(config.get("target", "any"), list(run.labels))
    label = target.labels[0]
    predictions = store.predictions(run_id, label=label)
    keep = complete_images(predictions, POLICIES)
    if not keep:
        sessions = store.sessions(run_id)
        failed = sessions[sessions["status"] == "failed"]
        first = f"; first error: {failed['error'].iloc[0]}" if len(failed) else ""
        why = f"{len(failed)} failed{first}"
        raise SystemExit(f"run {run_id}: no image on which every policy finished ({why})")
    predictions = predictions[predictions["image_id"].astype(str).isin(keep)]
    summary = summarise(predictions, scans, list(POLICIES))
    paired = compare(predictions, scans, REFERENCE, list(POLICIES))
    located = load_coverage(store, run_id, target.labels)
    located = located[located["image_id"].astype(str).isin(keep)]
    hits = coverage_summary(
        located, scans, int(config.get("patch_size", 16)), int(config.get("image_size", 64))
    )
    summary = summary.merge(hits, on=["policy", "scans"], how="left")
    extra = [paired_coverage(located, r.policy, REFERENCE, int(r.scans)) for r in paired.itertuples()]
    paired = pd.concat([paired, pd.DataFrame(extra, index=paired.index)], axis=1)

    checks = verdicts(summary, paired)
    from boed.report.build import decision_diagnostics

    diagnostics = decision_diagnostics(store, run_id)  # sampler-classifier gap, EIG s.e. per scan
    return {
        "n_images": len(keep),
        "target": target.name,
        "summary": json.loads(summary.to_json(orient="records")),
        "paired": json.loads(paired.to_json(orient="records")),
        "checks": json.loads(pd.DataFrame(checks).to_json(orient="records")),
        "diagnostics": json.loads(diagnostics.to_json(orient="records")),
    }


def print_tables(result: dict) -> None:
    summary = pd.DataFrame(result["summary"])
    cols = ["policy", "scans", "n", "accuracy", "accuracy_lo", "accuracy_hi", "auroc", "log_loss",
            "log_loss_lo", "log_loss_hi", "hit_rate", "observed"]  # fmt: skip
    cols = [c for c in cols if c in summary]
    with pd.option_context(
        "display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format
    ):
        print(f"\n{result['n_images']} complete images, target {result['target']}")
        print(summary[cols].to_string(index=False))
        print()
        print(pd.DataFrame(result["checks"]).to_string(index=False))
        if result.get("diagnostics"):
            print("\ndecision diagnostics (gap = g(v | completions) - g(v | observation))")
            print(pd.DataFrame(result["diagnostics"]).to_string(index=False))
    passed = sum(c["pass"] for c in result["checks"])
    print(f"\n{passed} of {len(result['checks'])} targets met")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--scans", type=int, default=5)
    parser.add_argument("--n-samples", type=int, default=10, help="completions per EIG estimate")
    parser.add_argument("--first-completions", type=int, default=None, help="N of the shared first decision")
    parser.add_argument("--grid", type=int, default=17, help="candidate scan positions per side")
    parser.add_argument("--batch-episodes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--runtime", default="eager", help="classifier runtime: eager (the reference), onnx, compile"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-source", default="phantoms-v2")
    parser.add_argument("--classifier", default=None, help="classifier checkpoint (default: the shipped one)")
    parser.add_argument(
        "--sampler-checkpoint", default=None, help="AIPO checkpoint (default: the shipped one)"
    )
    parser.add_argument(
        "--store", default="runs/eval_500.db", help="SQLite file of the run (kept on interruption)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the last run in --store")
    parser.add_argument("--analyse-only", action="store_true", help="analyse the last run in --store")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/eval_500.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import boed.simulate as sim
    from boed.store import Store
    from classifiers import load_classifier
    from datasets import open_dataset
    from generative.registry import build_sampler

    store = Store.open(args.store)
    run_id = None
    if args.resume or args.analyse_only:
        run_id = store.latest_run_id()
        if run_id is None:
            raise SystemExit(f"{args.store}: no run to resume or analyse")
        args.runtime = store.run_config(run_id).get("runtime", "eager")  # the run's own
    classifier = load_classifier(args.classifier, preset="cpu")
    if not args.analyse_only:
        from classifiers.runtime import with_runtime

        classifier = with_runtime(classifier, args.runtime)
    sampler = build_sampler("aipo", args.sampler_checkpoint, preset="cpu")
    seconds = None
    if not args.analyse_only:
        dataset = open_dataset(args.images_source, split="test", size=64, n=args.images, seed=args.seed)
        if args.first_completions is None:  # as `boed simulate`: the preset's default (cpu: 200)
            args.first_completions = sim.FIRST_COMPLETIONS.get("cpu")
        config = sim.SimulationConfig(
            images=args.images_source,
            n_images=args.images,
            scans=args.scans,
            n_samples=args.n_samples,
            grid=args.grid,
            first_completions=args.first_completions,
            policies=POLICIES,
            seed=args.seed,
            batch_episodes=args.batch_episodes,
            runtime=args.runtime,
        )
        for line in sim.check_parts(config, sampler, classifier, dataset):
            print("warning:", line, flush=True)
        t0 = time.perf_counter()

        def progress(p) -> None:
            if p.done % (3 * args.batch_episodes) == 0 or p.done == p.total:
                print(f"{p.done}/{p.total} sessions, {time.perf_counter() - t0:.0f} s", flush=True)

        run_id = sim.run_simulation(
            store, dataset, sampler, classifier, config, run_id=run_id, progress=progress,
            on_start=lambda rid: print(f"run {rid} in {args.store}", flush=True),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
    result = analyse(store, run_id, args.scans)
    run = store.get_run(run_id)
    ran = run.config or {}  # what the run used (not this call's arguments, under --analyse-only)
    for key in ("n_samples", "grid", "first_completions", "batch_episodes", "runtime"):
        setattr(args, key, ran.get(key, getattr(args, key)))
    result |= {
        "run_status": run.status,
        "images_in_run": int(ran.get("n_images", args.images)),
        "run_id": run_id,
        "images_requested": args.images,
        "images_source": args.images_source,
        "split": "test",
        "seed": args.seed,
        "policies": ["full-image", *POLICIES],
        "n_samples": args.n_samples,
        "grid": args.grid,
        "first_completions": args.first_completions,
        "batch_episodes": args.batch_episodes,
        "threads": args.threads,
        "runtime": args.runtime,
        "wall_seconds": None if seconds is None else round(seconds, 1),
        "load_average": os.getloadavg()[0],
        "machine": platform.platform(),
        "classifier": {"name": classifier.name, "sha256": classifier.sha256},
        "sampler": {"name": sampler.name, "sha256": sampler.sha256},
    }
    print_tables(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
