"""Benchmark: k scans per step, greedy-conditional vs the k best independent scans, exact information.

In the tests' exact toy world (``tests/boed/toys.py``: block images, an exact posterior sampler
that returns every consistent state with its posterior weight, a Bayes-optimal classifier) the
controller's EIG of a set of scans is its exact joint mutual information with the target. For
each world (seed), target and k this compares, by exact enumeration
(``tests.boed.toys.exact_mutual_information`` on the union of the k patches):

- greedy-conditional: ``boed.acquisition.Controller(scans_per_step=k)``, each next location
  scored with the earlier ones observed in every completion;
- independent: the k largest single-scan EIGs;
- optimum (k <= ``--exhaustive``): the best k-subset of candidates, by brute force.

Overlapping candidates (a 5 x 5 grid of 4 px scans on 16 px images) make the independent top-k
waste exposures on overlapping fields; a target over several findings makes scans complement
each other.

    .venv/bin/python benchmarks/scans_per_step.py [--worlds 10] [--k 1,2,3,4,5] [--exhaustive 3]
        [--json benchmarks/results/scans_per_step.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def joint_information(world, candidates, picks, indices) -> float:
    from tests.boed.toys import exact_mutual_information

    size = world.size
    blank = torch.zeros(1, 1, size, size)
    union = candidates.masks[list(picks)].amax(0)
    return float(exact_mutual_information(world, blank, blank, [union], indices)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", type=int, default=10)
    parser.add_argument("--k", default="1,2,3,4,5")
    parser.add_argument("--exhaustive", type=int, default=3, help="brute-force optimum up to this k")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/scans_per_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from boed.acquisition import Controller
    from boed.scanner import CandidateGrid
    from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyWorld

    ks = [int(k) for k in args.k.split(",")]
    candidates = CandidateGrid.from_grid(16, 4, grid=5)
    cases = []
    t0 = time.perf_counter()
    for seed in range(args.worlds):
        world = ToyWorld(size=16, patch=4, seed=seed, findings=("Effusion", "Nodule", "Mass"), n_nuisance=3)
        for target in ("any", "all"):
            for k in ks:
                controller = Controller(
                    PosteriorSampler(world, exact=True),
                    BayesClassifier(world),
                    candidates,
                    target,
                    scans_per_step=k,
                )
                proposal = controller.propose()
                indices = list(controller.target.indices)
                greedy = list(proposal.candidates_chosen)
                independent = torch.argsort(proposal.eig, descending=True, stable=True)[:k].tolist()
                row = {
                    "world": seed,
                    "target": target,
                    "k": k,
                    "greedy": joint_information(world, candidates, greedy, indices),
                    "greedy_estimate": proposal.joint_eig[-1],
                    "independent": joint_information(world, candidates, independent, indices),
                }
                if k <= args.exhaustive:
                    row["optimum"] = max(
                        joint_information(world, candidates, subset, indices)
                        for subset in itertools.combinations(range(len(candidates)), k)
                    )
                cases.append(row)
    summary = []
    for target in ("any", "all"):
        for k in ks:
            rows = [r for r in cases if r["k"] == k and r["target"] == target]
            entry = {
                "target": target,
                "k": k,
                "cases": len(rows),
                "greedy_mean_nats": sum(r["greedy"] for r in rows) / len(rows),
                "independent_mean_nats": sum(r["independent"] for r in rows) / len(rows),
                "greedy_at_least_independent": sum(r["greedy"] >= r["independent"] - 1e-6 for r in rows),
                "greedy_strictly_better": sum(r["greedy"] > r["independent"] + 1e-6 for r in rows),
                "max_estimate_error": max(abs(r["greedy"] - r["greedy_estimate"]) for r in rows),
            }
            if all("optimum" in r for r in rows):
                entry["optimum_mean_nats"] = sum(r["optimum"] for r in rows) / len(rows)
                entry["greedy_is_optimal"] = sum(r["greedy"] >= r["optimum"] - 1e-6 for r in rows)
            summary.append(entry)
    columns = ("greedy", "indep.", "optimum")
    print(
        f"{'target':6} {'k':>2} "
        + " ".join(f"{c:>8}" for c in columns)
        + f" {'g>=i':>6} {'g>i':>5} {'g=opt':>6}"
    )
    for e in summary:
        opt = f"{e['optimum_mean_nats']:8.4f}" if "optimum_mean_nats" in e else f"{'–':>8}"
        g_opt = f"{e['greedy_is_optimal']:>3}/{e['cases']}" if "greedy_is_optimal" in e else f"{'–':>6}"
        means = f"{e['greedy_mean_nats']:8.4f} {e['independent_mean_nats']:8.4f} {opt}"
        counts = (
            f"{e['greedy_at_least_independent']:>3}/{e['cases']} {e['greedy_strictly_better']:>5} {g_opt}"
        )
        print(f"{e['target']:6} {e['k']:>2} {means} {counts}")
    result = {
        "world": "tests.boed.toys.ToyWorld(size=16, patch=4, findings=(Effusion, Nodule, Mass), "
        "n_nuisance=3)",
        "candidates": "5 x 5 grid of 4 px scans (overlapping)",
        "information": "exact joint mutual information with the target (nats), nothing observed before",
        "seconds": round(time.perf_counter() - t0, 1),
        "summary": summary,
        "cases": cases,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
