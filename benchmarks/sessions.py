"""Benchmark: simulated scan sessions per minute with B episodes batched in one environment.

Runs ``boed.simulate.run_simulation`` (the code behind ``boed simulate``) on the phantom test
images with the shipped ``cpu``-preset checkpoints, the default policies (boed, random, oracle)
plus the full-image reference, once per ``--batch`` value, each into its own in-memory SQLite
store, and reports sessions per minute (every session of the run / wall seconds of
``run_simulation``; models are loaded once, before). In the same run it checks that every batch
size gives the results of B = 1: the same scan locations in every session and the largest
difference of any logged probability or EIG (float rounding of batched convolutions only).

``--joint-sampler`` adds one more run at the best B that draws the completions of all B episodes
in one sampler call (``sampler_batching="joint"``): faster where the sampler dominates, but its
draws then depend on the batch, so its results are not compared.

    .venv/bin/python benchmarks/sessions.py [--images 8] [--scans 5] [--batch 1,2,4,8] [--threads 1]
        [--joint-sampler] [--json benchmarks/results/sessions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def steps_of(store, run_id: str):
    """``{(image_id, policy): [(step, candidate, probs..., eig)]}`` of a run."""
    import pandas as pd

    steps = store.steps(run_id)
    preds = store.predictions(run_id)
    out = {}
    for (image_id, policy), sub in steps.groupby(["image_id", "policy"]):
        rows = []
        for _, r in sub.sort_values("step").iterrows():
            p = preds[(preds.session_id == r.session_id) & (preds.step == r.step)]["prob"].tolist()
            candidate = None if pd.isna(r.candidate) else int(r.candidate)
            rows.append((int(r.step), candidate, p, None if pd.isna(r.eig) else float(r.eig)))
        out[(image_id, policy)] = rows
    return out


def compare(reference, other) -> dict:
    same_locations, max_diff = True, 0.0
    for key, rows in reference.items():
        for a, b in zip(rows, other[key], strict=True):
            same_locations &= a[1] == b[1]
            max_diff = max(max_diff, *(abs(x - y) for x, y in zip(a[2], b[2], strict=True)))
            if a[3] is not None and b[3] is not None:
                max_diff = max(max_diff, abs(a[3] - b[3]))
    return {"same_locations": bool(same_locations), "max_abs_difference": max_diff}


def run_once(dataset, sampler, classifier, *, images: int, scans: int, batch: int, joint: bool = False):
    """One ``run_simulation`` into an in-memory store: ``(store, run_id, wall s, CPU s, sessions, load)``."""
    import boed.simulate as sim
    from boed.store import Store

    config = sim.SimulationConfig(
        images="phantoms",
        n_images=images,
        scans=scans,
        batch_episodes=batch,
        sampler_batching="joint" if joint else "per-episode",
    )
    store = Store.open("sqlite://")
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    run_id = sim.run_simulation(store, dataset, sampler, classifier, config)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(store.sessions(run_id))
    return store, run_id, seconds, cpu, n, round((load + os.getloadavg()[0]) / 2, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--scans", type=int, default=5)
    parser.add_argument("--batch", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 when other jobs run)")
    parser.add_argument("--joint-sampler", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/sessions.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from classifiers import load_classifier
    from datasets import open_dataset
    from generative.registry import build_sampler

    classifier = load_classifier(None, preset="cpu")
    sampler = build_sampler("aipo", None, preset="cpu")
    dataset = open_dataset("phantoms", split="test", size=64, n=args.images, seed=0)
    batches = [int(b) for b in args.batch.split(",")]
    rows, reference = [], None

    def one_run(b: int, joint: bool = False):
        return run_once(
            dataset, sampler, classifier, images=args.images, scans=args.scans, batch=b, joint=joint
        )

    for b in batches:
        store, run_id, seconds, cpu, n, load = one_run(b)
        steps = steps_of(store, run_id)
        reference = reference or steps
        row = {"batch_episodes": b, "sessions": n, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
               "sessions_per_minute": round(60 * n / seconds, 2),
               "sessions_per_cpu_minute": round(60 * n / cpu, 2), "load_average": load}  # fmt: skip
        row |= compare(reference, steps)
        rows.append(row)
        print(
            f"B = {b:2d}: {n} sessions in {seconds:7.1f} s wall, {cpu:7.1f} s CPU = "
            f"{row['sessions_per_minute']:6.2f} sessions/min "
            f"({row['sessions_per_cpu_minute']:6.2f} per CPU-minute, load average {load}; "
            f"same locations as B = 1: {row['same_locations']}, max |diff| {row['max_abs_difference']:.2e})",
            flush=True,
        )
    # on a shared machine wall time drifts with the other jobs: the CPU time of this process
    # (one torch thread) is the fairer measure, so the best B is chosen by it
    best = max(rows, key=lambda r: r["sessions_per_cpu_minute"])
    result = {
        "preset": "cpu",
        "images": args.images,
        "scans": args.scans,
        "policies": ["full-image", "boed", "random", "oracle"],
        "threads": args.threads,
        "machine": platform.platform(),
        "runs": rows,
        "best_batch_episodes": best["batch_episodes"],
        "speedup_best_vs_1_wall": round(best["sessions_per_minute"] / rows[0]["sessions_per_minute"], 3),
        "speedup_best_vs_1_cpu": round(
            best["sessions_per_cpu_minute"] / rows[0]["sessions_per_cpu_minute"], 3
        ),
        "notes": [
            f"classifier {classifier.name} ({(classifier.sha256 or '')[:12]}), sampler aipo "
            f"({(sampler.sha256 or '')[:12]}); in-memory SQLite store; models loaded before timing",
        ],
    }
    if args.joint_sampler:
        _, _, seconds, cpu, n, _load = one_run(best["batch_episodes"], joint=True)
        result["joint_sampler"] = {
            "batch_episodes": best["batch_episodes"],
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "sessions_per_minute": round(60 * n / seconds, 2),
            "sessions_per_cpu_minute": round(60 * n / cpu, 2),
        }
        print(f"joint sampler at B = {best['batch_episodes']}: {60 * n / cpu:.2f} sessions per CPU-minute")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"best B = {best['batch_episodes']}: x{result['speedup_best_vs_1_cpu']} (CPU), "
        f"x{result['speedup_best_vs_1_wall']} (wall) vs B = 1; wrote {args.json}"
    )


if __name__ == "__main__":
    main()
