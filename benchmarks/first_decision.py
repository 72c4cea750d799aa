"""Study: how often the first BOED decision picks the truly best scan, against N completions.

On the exact toy world of the tests (``tests/boed/toys.py``: a block-constant image whose findings
show in some blocks, an exact posterior sampler and the Bayes-optimal classifier) the EIG of
every candidate is known exactly, so the estimate of Eq. 17 (Harvey, Naderiparizi & Wood,
"Image Completion via Inference in Deep Generative Models", 2021) from N completions can be
scored: the fraction of repetitions whose choice is a truly best candidate (exact EIG within
1e-9 nats of the maximum; ties are common, several scans see the same blocks) and the mean
regret (exact EIG of the best minus that of the choice, nats), for each N and each rule:

* ``boed`` (``boed.policies.BoedPolicy``): the argmax of the estimated EIG;
* ``boed-lcb`` (``boed.policies.BoedLCBPolicy``): the argmax of ``EIG − z · SE`` with the
  Monte Carlo standard error of ``boed.eig.eig_standard_error`` (z = 1).

With nothing observed the posterior is the prior, so completions are draws of the world's states
from the prior, and the information gain of a completion depends only on which state it is:
``IG[state, c]`` is computed once with the library's estimator (``expected_information_gain``
over all states), and a repetition's estimate is the mean of N rows drawn from it: the same
numbers the estimator gives for those completions (checked here on real sampler draws), at a
fraction of the cost. The choices are made by the policies' own ``choose_batch`` over all
repetitions at once.

    PYTHONPATH=. .venv/bin/python benchmarks/first_decision.py [--repeats 2000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

NS = (10, 20, 50, 100, 200, 500)
WORLDS = {
    # name: (ToyWorld keyword arguments, grid G, world seeds)
    "2 findings, 2 nuisances, 4 px scans of 8 px (25 candidates)": (dict(size=8, patch=4), 5, range(10)),
    "3 findings, 3 nuisances, 2 px scans of 8 px (49 candidates)": (
        dict(size=8, patch=2, findings=("Effusion", "Nodule", "Mass"), n_nuisance=3),
        7,
        range(10),
    ),
}
TIE = 1e-9


def information_gain_table(world, grid, target: str):
    """``(IG (n_states, K), exact EIG (K,))`` with nothing observed, from the library's estimator."""
    from boed.eig import expected_information_gain
    from tests.boed.toys import BayesClassifier

    clf = BayesClassifier(world)
    zero = torch.zeros(1, 1, world.size, world.size)
    every_state = world.images[:, None]  # (n_states, 1, 1, S, S): one completion per state
    ig = expected_information_gain(clf, zero, zero, every_state[:, 0], grid, target).ig
    return ig, world.prior @ ig


def check_against_estimator(world, grid, table, target: str, n: int = 20) -> float:
    """max |EIG from the table − EIG of ``expected_information_gain``| on real sampler draws."""
    from boed.eig import expected_information_gain
    from tests.boed.toys import BayesClassifier, PosteriorSampler

    zero = torch.zeros(1, 1, world.size, world.size)
    gen = torch.Generator().manual_seed(7)
    comps = PosteriorSampler(world).sample(zero, zero, n, generator=gen)
    eig = expected_information_gain(BayesClassifier(world), zero, zero, comps, grid, target).eig
    states = [
        int(((world.images - img).abs().flatten(1).amax(1) < 1e-6).nonzero()[0]) for img in comps.images[:, 0]
    ]
    return float((table[states].mean(0) - eig).abs().max())


def choose(policy, eig, stderr, grid, size: int) -> torch.Tensor:
    """``policy``'s first scan for R repetitions at once (``(R, K)`` maps): ``(R,)``."""
    from boed.policies import BatchState

    r = eig.shape[0]
    zero = torch.zeros(r, 1, size, size)
    state = BatchState(
        step=1,
        observed=zero,
        mask=zero,
        candidates=grid,
        scanned=[[] for _ in range(r)],
        generators=[None] * r,
        eig=eig,
        eig_se=stderr,
    )
    return policy.choose_batch(state)


def study_world(world, grid, repeats: int, target: str, seed: int) -> dict:
    from boed.eig import eig_standard_error
    from boed.policies import get_policy

    table, exact = information_gain_table(world, grid, target)
    best = exact >= exact.max() - TIE
    gen = torch.Generator().manual_seed(seed)
    rules = {name: get_policy(name) for name in ("boed", "boed-lcb")}
    out = {"n_best": int(best.sum()), "candidates": len(grid), "max_eig": float(exact.max()), "by_n": {}}
    out["check_max_abs_difference"] = check_against_estimator(world, grid, table, target)
    for n in NS:
        draws = torch.multinomial(world.prior, n * repeats, replacement=True, generator=gen).reshape(
            repeats, n
        )
        ig = table[draws]  # (R, N, K)
        eig = ig.mean(1)
        stderr = eig_standard_error(ig.transpose(0, 1))  # (N, R, K) -> (R, K): reduces over the draws
        row = {}
        for name, policy in rules.items():
            picks = choose(policy, eig, stderr, grid, world.size)
            row[name] = {
                "correct": float(best[picks].double().mean()),
                "regret_nats": float((exact.max() - exact[picks]).mean()),
            }
        row["se_at_best_nats"] = float(stderr[:, int(exact.argmax())].mean())
        out["by_n"][str(n)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--target", default="any")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/first_decision.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from boed.scanner import CandidateGrid
    from tests.boed.toys import ToyWorld

    t0 = time.perf_counter()
    record = {
        "what": "fraction of first decisions (nothing observed) that pick a truly best scan, exact toy world",
        "target": args.target,
        "repeats": args.repeats,
        "ns": list(NS),
        "machine": platform.platform(),
        "worlds": {},
    }
    for name, (kwargs, g, seeds) in WORLDS.items():
        per_seed = {}
        for s in seeds:
            world = ToyWorld(seed=s, **kwargs)
            grid = CandidateGrid.from_grid(world.size, world.patch, g)
            per_seed[str(s)] = study_world(world, grid, args.repeats, args.target, seed=1000 + s)
        mean = {
            str(n): {
                rule: {
                    key: sum(w["by_n"][str(n)][rule][key] for w in per_seed.values()) / len(per_seed)
                    for key in ("correct", "regret_nats")
                }
                for rule in ("boed", "boed-lcb")
            }
            for n in NS
        }
        record["worlds"][name] = {"mean_over_seeds": mean, "seeds": per_seed}
    record["seconds"] = round(time.perf_counter() - t0, 1)

    print(f"first decision on the exact toy world, target {args.target}, {args.repeats} repetitions per N")
    print("fraction picking a truly best scan (mean regret, nats), mean over 10 world seeds:")
    for name, world in record["worlds"].items():
        print(f"  {name}")
        print(f"    {'N':>5}  {'argmax (boed)':>22}  {'EIG - 1 SE (boed-lcb)':>22}")
        for n in NS:
            row = world["mean_over_seeds"][str(n)]
            cells = [f"{row[r]['correct']:.3f} ({row[r]['regret_nats']:.4f})" for r in ("boed", "boed-lcb")]
            print(f"    {n:>5}  {cells[0]:>22}  {cells[1]:>22}")
    worst = max(w["check_max_abs_difference"] for v in record["worlds"].values() for w in v["seeds"].values())
    print(f"table vs estimator on real draws: max |difference| {worst:.2e} nats; {record['seconds']} s")
    if not math.isfinite(worst) or worst > 1e-6:
        raise SystemExit("the IG table does not reproduce the estimator")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
