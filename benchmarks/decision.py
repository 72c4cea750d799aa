"""Benchmark: one BOED scan decision at the ``cpu`` preset (N = 10 completions, 17 x 17 grid).

A decision = N sampler draws + the EIG (Eq. 17) of every candidate (2,890 classifier inputs) +
argmax. Measured: median seconds over ``--repeats`` decisions with the batched estimator
(``boed.eig.expected_information_gain``), and, in the same run, the straightforward reference that
calls the classifier once per (candidate, completion) (``expected_information_gain_loop``); the
ratio is what to compare across machines. Uses the shipped checkpoints when present, else fresh
untrained cpu-preset models (same architecture, so the same cost), and says which.

    .venv/bin/python benchmarks/decision.py [--repeats 5] [--loop-repeats 1] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def load_parts(preset: str):
    notes = []
    try:
        from classifiers import load_classifier

        classifier = load_classifier(None, preset=preset)
        notes.append(f"classifier: shipped {classifier.name} ({(classifier.sha256 or '')[:12]})")
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to a fresh model of the same size
        from classifiers.avp_cnn import AVPCNN
        from classifiers.config import classifier_preset
        from classifiers.partial import PartialClassifier

        classifier = PartialClassifier(AVPCNN(classifier_preset(preset)), name="untrained")
        notes.append(f"classifier: fresh untrained {preset}-preset model (no shipped checkpoint: {exc})")
    try:
        from generative.registry import build_sampler

        sampler = build_sampler("aipo", None, preset=preset)
        notes.append(f"sampler: shipped aipo ({(sampler.sha256 or '')[:12]})")
    except Exception as exc:  # noqa: BLE001
        from generative.aipo import AIPO, AIPOSampler
        from generative.config import get_config

        sampler = AIPOSampler(AIPO(get_config(preset)), name="untrained")
        notes.append(f"sampler: fresh untrained {preset}-preset AIPO (no shipped checkpoint: {exc})")
    return classifier, sampler, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/decision.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from boed.config import get_preset
    from boed.eig import expected_information_gain, expected_information_gain_loop
    from boed.scanner import CandidateGrid
    from datasets.phantoms import generate_phantoms

    pre = get_preset(args.preset)
    classifier, sampler, notes = load_parts(args.preset)
    grid = CandidateGrid.from_grid(pre.image_size, pre.patch_size, pre.grid)
    image = generate_phantoms(1, size=pre.image_size, seed=123).images[:1]
    mask = grid.masks[len(grid) // 2 : len(grid) // 2 + 1].clone()  # one central scan already made
    observed = image * mask
    gen = torch.Generator().manual_seed(0)

    def decision(eig_fn):
        t0 = time.perf_counter()
        comps = sampler.sample(observed, mask, pre.n_samples, generator=gen)
        t1 = time.perf_counter()
        result = eig_fn(classifier, observed, mask, comps, grid, "any")
        int(torch.argmax(result.eig))
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0, t2 - t1, result, comps

    decision(expected_information_gain)  # warm-up
    fast = [decision(expected_information_gain) for _ in range(args.repeats)]
    print(f"batched: {[round(r[0], 2) for r in fast]} s; now the per-candidate loop...", flush=True)
    slow = [decision(expected_information_gain_loop) for _ in range(args.loop_repeats)]
    # agreement on the loop's own completions
    a = expected_information_gain(classifier, observed, mask, slow[-1][4], grid, "any").eig
    b = slow[-1][3].eig
    med_fast = statistics.median(r[0] for r in fast)
    med_slow = statistics.median(r[0] for r in slow)
    record = {
        "preset": args.preset,
        "n_samples": pre.n_samples,
        "candidates": len(grid),
        "classifier_inputs_per_decision": len(grid) * pre.n_samples,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "notes": notes,
        "batched": {
            "median_s": med_fast,
            "sample_s": statistics.median(r[1] for r in fast),
            "eig_s": statistics.median(r[2] for r in fast),
            "runs": [r[0] for r in fast],
        },
        "per_candidate_loop": {"median_s": med_slow, "runs": [r[0] for r in slow]},
        "speedup": med_slow / med_fast,
        "max_abs_eig_difference": float((a - b).abs().max()),
        "target_s": 2.0,
    }
    rows = [
        ("batched decision (median)", f"{med_fast:.3f} s"),
        ("  of which N sampler draws", f"{record['batched']['sample_s']:.3f} s"),
        ("  of which EIG over the grid", f"{record['batched']['eig_s']:.3f} s"),
        ("per-candidate loop decision", f"{med_slow:.3f} s"),
        ("speed-up (loop / batched)", f"{record['speedup']:.1f}x"),
        ("max |EIG batched - loop|", f"{record['max_abs_eig_difference']:.2e} nats"),
        ("target", "<= 2 s per decision"),
    ]
    print(
        f"one scan decision, preset {args.preset}: N={pre.n_samples}, {len(grid)} candidates, "
        f"{torch.get_num_threads()} threads"
    )
    for note in notes:
        print(f"  {note}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
