"""Benchmark: the amortised policy against exact BOED and random, latency and accuracy.

In one process, on the held-out **test** split (never the images the maps were made on):

* **decision latency** — the exact decision (N completions + the EIG of every candidate +
  argmax, ``Controller.propose``) and the amortised one (one forward pass + argmax,
  ``AmortizedPolicy.choose``) on the same observations (those the exact sessions reached),
  timed alternately so that the load of a shared machine weighs on both alike; medians and
  their ratio (targets: >= 100x, under 10 ms);
* **accuracy after 0..T scans** of the run's target for ``amortized``, ``boed`` and ``random``
  on the same images, sessions seeded as ``boed simulate`` seeds them (``session_seed``; the
  shared first decision of ``boed``), with 95 % bootstrap CIs and paired differences
  (``boed.report.metrics.summarise`` / ``compare``);
* **the share of exact BOED's gain over random that amortized keeps** at each scan count,
  ``(acc_amortized - acc_random) / (acc_boed - acc_random)``, with a paired bootstrap CI
  (the same resampled images for the three policies; undefined where BOED gains nothing).

``--exact-from STORE`` takes the ``boed`` and ``random`` sessions from the last run in that store
(``benchmarks/eval_500.py`` writes ``runs/eval_500.db``: the same test images, the same session
seeds, batched and on ONNX Runtime) instead of running them here; the run's classifier and sampler
must be the ones given, and only its images on which both finished are used. Only the amortised
sessions and the latency states then run here.

``--amortized-first C`` (a diagnostic) starts every amortised session at candidate ``C``, e.g. the
first scan the exact sessions made, and follows the network from the second scan on: it separates
what the network chooses after a given first view from where its own first scan put it.

Sessions are cached in ``--cache`` (one JSON line each, keyed by the checkpoints' sha256, the
seed and the settings), so the exact sessions, the expensive part, can be run first
(``--policies boed,random``) and the whole benchmark later reuses them.

    .venv/bin/python benchmarks/amortized.py [--images phantoms] [--n-images 30] [--scans 5]
        [--amortized-checkpoint boed/amortized/weights/phantom-cpu] [--latency-states 5]
        [--threads 1] [--cache runs/amortized-eval] [--json benchmarks/results/amortized.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

POLICIES = ("random", "boed", "amortized")


def session_key(args, policy: str, parts: dict[str, str | None]) -> dict:
    key = {
        "policy": policy,
        "images": args.images,
        "seed": args.seed,
        "scans": args.scans,
        "target": args.target,
        "classifier": parts["classifier"],
    }
    if policy == "boed":
        key |= {"sampler": parts["sampler"], "n_samples": args.n_samples, "first": args.first_completions}
    if policy == "amortized":
        key |= {"amortized": parts["amortized"]}
        if args.amortized_first is not None:
            key |= {"first_scan": args.amortized_first}
    return key


def start_at(policy, candidate: int):
    """``policy`` whose first scan (an empty mask) is ``candidate`` for every episode; later scans
    are its own. A diagnostic: amortised sessions started where the exact sessions started."""
    choose_batch = policy.choose_batch

    def first_then_own(state):
        chosen = choose_batch(state).clone()
        chosen[~(state.mask > 0.5).flatten(1).any(1).cpu()] = int(candidate)
        return chosen

    policy.choose_batch = first_then_own
    return policy


def load_cache(path: Path) -> dict[str, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that session is run again
            out[json.dumps(row["key"], sort_keys=True) + f"#{row['image_index']}"] = row
    return out


def run_sessions(args, policy_name, dataset, parts, objects, cache, cache_file, indices) -> list[dict]:
    """The sessions of ``policy_name`` on the test images ``indices``, from the cache or run now."""
    from boed.amortized.policy import AmortizedPolicy
    from boed.policies import get_policy
    from boed.session import run_session
    from boed.simulate import session_seed

    classifier, sampler, candidates, target, prior = objects
    key = session_key(args, policy_name, parts)
    rows = []
    for index in indices:
        tag = json.dumps(key, sort_keys=True) + f"#{index}"
        if tag in cache:
            rows.append(cache[tag])
            continue
        item = dataset[index]
        image = item["img"].float().reshape(1, 1, args.size, args.size)
        policy = (
            AmortizedPolicy(args.amortized_checkpoint)
            if policy_name == "amortized"
            else get_policy(policy_name)
        )
        if policy_name == "amortized" and args.amortized_first is not None:
            policy = start_at(policy, args.amortized_first)
        generator = torch.Generator().manual_seed(session_seed(args.seed, index, policy_name))
        t0 = time.perf_counter()
        result = run_session(
            image,
            labels=item["lab"].float().reshape(-1),
            classifier=classifier,
            policy=policy,
            candidates=candidates,
            scans=args.scans,
            sampler=sampler,
            n_samples=args.n_samples,
            target=target,
            generator=generator,
            prior_decision=prior if policy.needs_eig else None,
        )
        row = {
            "key": key,
            "image_index": index,
            "image_id": str(item["idx"]),
            "truth": float(item["lab"].reshape(-1)[target.indices[0]]),
            "probs": [float(s.probs[target.indices[0]]) for s in result.steps],
            "chosen": [s.candidate for s in result.steps],
            "step_seconds": [round(s.seconds, 4) for s in result.steps],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        with open(cache_file, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        cache[tag] = row
        rows.append(row)
        print(f"{policy_name} image {index}: {row['seconds']:.1f} s", flush=True)
    return rows


def rows_from_store(path: str, dataset, parts: dict[str, str | None], scans: int, label: str) -> dict:
    """``{"boed": rows, "random": rows}`` of :func:`run_sessions`'s shape from the last run in the
    store at ``path`` (its done sessions on images of ``dataset``, in dataset order).

    Raises:
        SystemExit: an empty store, or a run made with other checkpoints (one line naming them).
    """
    from boed.store import Store

    store = Store.open(path)
    run_id = store.latest_run_id()
    if run_id is None:
        raise SystemExit(f"--exact-from {path}: no run in that store")
    run = store.get_run(run_id)
    for what, have in (("classifier", run.classifier_sha256), ("sampler", run.sampler_sha256)):
        if have != parts[what]:
            raise SystemExit(
                f"--exact-from {path}: run {run_id} used another {what} "
                f"(sha256 {str(have)[:12]}..., here {str(parts[what])[:12]}...)"
            )
    index = {str(dataset.ids[i]): i for i in range(len(dataset))}
    preds = store.predictions(run_id, label=label)
    steps = store.steps(run_id)
    sessions = store.sessions(run_id)
    sessions = sessions[(sessions["status"] == "done") & sessions["image_id"].astype(str).isin(index)]
    out: dict[str, list[dict]] = {}
    for policy in ("boed", "random"):
        rows = []
        for s in sessions[sessions["policy"] == policy].itertuples():
            p = preds[preds["session_id"] == s.session_id].sort_values("step")
            c = steps[steps["session_id"] == s.session_id].sort_values("step")
            if len(p) < scans + 1:
                continue
            rows.append(
                {
                    "image_index": index[str(s.image_id)],
                    "image_id": str(s.image_id),
                    "truth": float(p["truth"].iloc[0]),
                    "probs": [float(v) for v in p["prob"]],
                    "chosen": [None if pd.isna(v) else int(v) for v in c["candidate"]],
                    "seconds": float(s.seconds),
                    "from": f"{path}#{run_id}",
                }
            )
        out[policy] = sorted(rows, key=lambda r: r["image_index"])
    both = {r["image_id"] for r in out["boed"]} & {r["image_id"] for r in out["random"]}
    return {policy: [r for r in rows if r["image_id"] in both] for policy, rows in out.items()}


def predictions_frame(rows_by_policy: dict[str, list[dict]]) -> pd.DataFrame:
    """The long table of ``boed.report.metrics``: session_id, policy, image_id, step, prob, truth."""
    records, sid = [], 0
    for policy, rows in rows_by_policy.items():
        for row in rows:
            sid += 1
            for step, p in enumerate(row["probs"]):
                records.append((sid, policy, row["image_id"], step, p, row["truth"]))
    return pd.DataFrame(records, columns=["session_id", "policy", "image_id", "step", "prob", "truth"])


def gain_kept(rows_by_policy: dict[str, list[dict]], scans: int, seed: int = 0) -> list[dict]:
    """``(acc_A - acc_R) / (acc_B - acc_R)`` per scan count, with a paired percentile-bootstrap
    95 % CI (the resamples of ``boed.report.stats``: 2,000 draws of the images, jointly for the
    three policies); NaN where exact BOED's gain is 0 (the share is undefined there)."""
    from boed.report.stats import N_RESAMPLES

    by_image = {p: {r["image_id"]: r for r in rows} for p, rows in rows_by_policy.items()}
    images = sorted(set.intersection(*[set(v) for v in by_image.values()]))
    if not images:
        return []
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(images), size=(N_RESAMPLES, len(images)))
    out = []
    for t in range(scans + 1):
        right = {}
        for p, rows in by_image.items():
            probs = np.array([rows[i]["probs"][min(t, len(rows[i]["probs"]) - 1)] for i in images])
            truth = np.array([rows[i]["truth"] for i in images])
            right[p] = ((probs >= 0.5) == (truth > 0.5)).astype(float)
        a, b, r = right["amortized"], right["boed"], right["random"]
        gain_b, gain_a = b.mean() - r.mean(), a.mean() - r.mean()
        share = gain_a / gain_b if gain_b != 0 else math.nan
        gb, ga = b[idx].mean(1) - r[idx].mean(1), a[idx].mean(1) - r[idx].mean(1)
        ok = gb > 0
        shares = ga[ok] / gb[ok]
        lo, hi = np.percentile(shares, [2.5, 97.5]) if ok.mean() > 0.5 else (math.nan, math.nan)
        out.append(
            {
                "scans": t,
                "n_images": len(images),
                "boed_gain": float(gain_b),
                "amortized_gain": float(gain_a),
                "share_kept": float(share),
                "share_kept_lo": float(lo),
                "share_kept_hi": float(hi),
                "resamples_with_boed_gain": float(ok.mean()),
            }
        )
    return out


def latency(args, rows, dataset, objects, amortized) -> dict:
    """Exact vs amortised decision on the observations the exact sessions reached, alternately."""
    from boed.acquisition import Controller
    from boed.policies import DecisionState

    classifier, sampler, candidates, target, _ = objects
    states = []
    for row in rows:
        for step in range(2, args.scans + 1):  # observations after 1.. scans (step 1 is shared)
            states.append((row["image_index"], [c for c in row["chosen"][1:step] if c is not None]))
    states = states[: args.latency_states]
    exact_s, amort_s, agree = [], [], []
    p = candidates.patch_size
    for n, (index, scanned) in enumerate(states):
        image = dataset[index]["img"].float().reshape(1, 1, args.size, args.size)
        ctrl = Controller(sampler, classifier, candidates, target, args.n_samples, seed=n)
        for c in scanned:
            r, q = candidates.location(c)
            ctrl.observe((r, q), image[0, 0, r : r + p, q : q + p])
        state = DecisionState(
            step=len(scanned) + 1,
            observed=ctrl.observed,
            mask=ctrl.mask,
            candidates=candidates,
            scanned=list(scanned),
            classifier=classifier,
            target=target,
        )
        amortized.choose(state)  # warm (first call loads nothing: the network is cached)
        for _ in range(args.latency_repeats):
            amortized.forget()  # time the forward pass, not the kept map of the same observation
            t0 = time.perf_counter()
            a = amortized.choose(state)
            amort_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        proposal = ctrl.propose()
        exact_s.append(time.perf_counter() - t0)
        agree.append(int(a == proposal.candidate))
    exact, amort = statistics.median(exact_s), statistics.median(amort_s)
    return {
        "states": len(states),
        "exact_median_s": exact,
        "exact_all_s": [round(s, 4) for s in exact_s],
        "amortized_median_s": amort,
        "amortized_p90_s": float(np.percentile(amort_s, 90)),
        "amortized_calls": len(amort_s),
        "speedup": exact / amort,
        "same_choice_as_this_exact_decision": float(np.mean(agree)) if agree else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="phantoms")
    parser.add_argument("--n-images", type=int, default=30)
    parser.add_argument("--scans", type=int, default=5)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument(
        "--first-completions",
        type=int,
        default=200,
        help="completions of boed's shared first decision (boed simulate's cpu default, 200)",
    )
    parser.add_argument("--target", default="any")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--classifier", default=None)
    parser.add_argument("--sampler-checkpoint", default=None)
    parser.add_argument("--amortized-checkpoint", default=None)
    parser.add_argument(
        "--amortized-first",
        type=int,
        default=None,
        help="diagnostic: start every amortised session at this candidate (e.g. the exact sessions' "
        "first scan), then follow the network",
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--latency-states", type=int, default=5)
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("runs/amortized-eval"))
    parser.add_argument(
        "--exact-from", default=None, help="take boed and random sessions from this store's last run"
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/amortized.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from boed.amortized.policy import AmortizedPolicy, checkpoint_warnings
    from boed.config import get_preset
    from boed.eig import resolve_target
    from boed.report.metrics import compare, summarise
    from boed.scanner import CandidateGrid
    from boed.session import prior_decision
    from boed.simulate import session_seed
    from classifiers import load_classifier
    from datasets import open_dataset
    from generative.registry import build_sampler

    t_run = time.perf_counter()
    pre = get_preset(args.preset)
    args.size = pre.image_size
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    classifier = load_classifier(args.classifier, preset=pre.name)
    sampler = build_sampler("aipo", args.sampler_checkpoint, preset=pre.name)
    target = resolve_target(args.target, list(classifier.labels))
    candidates = CandidateGrid.from_grid(pre.image_size, pre.patch_size, pre.grid)
    dataset = open_dataset(args.images, split="test", size=pre.image_size, n=args.n_images, seed=args.seed)
    amortized, warnings = None, []
    parts = {"classifier": classifier.sha256, "sampler": sampler.sha256, "amortized": None}
    if "amortized" in policies:
        amortized = AmortizedPolicy(args.amortized_checkpoint)
        amortized.network  # noqa: B018 - load now: a bad checkpoint fails before any session
        parts["amortized"] = amortized.meta["sha256"]
        warnings = checkpoint_warnings(amortized.meta, classifier, sampler)
        for line in warnings:
            print(f"warning: {line}")
    memo: dict = {}

    def prior():  # the shared first decision of boed, computed only when a boed session runs
        if "prior" not in memo:
            generator = torch.Generator().manual_seed(session_seed(args.seed, -1, "prior-decision"))
            memo["prior"] = prior_decision(
                sampler, classifier, candidates, args.first_completions, target, generator=generator
            )
        return memo["prior"]

    objects = (classifier, sampler, candidates, target, prior)
    args.cache.mkdir(parents=True, exist_ok=True)
    cache_file = args.cache / "sessions.jsonl"
    cache = load_cache(cache_file)
    rows = {}
    if args.exact_from is not None:
        rows = rows_from_store(args.exact_from, dataset, parts, args.scans, target.labels[0])
        print(f"boed and random sessions on {len(rows['boed'])} images from {args.exact_from}")
        indices = [r["image_index"] for r in rows["boed"]]
        policies = [p for p in policies if p not in rows]
    else:
        indices = list(range(len(dataset)))
    rows |= {p: run_sessions(args, p, dataset, parts, objects, cache, cache_file, indices) for p in policies}
    policies = list(rows)
    if set(policies) != set(POLICIES):
        print(f"sessions of {', '.join(policies)} cached in {cache_file}; run all three for the figures")
        return
    lat = latency(args, rows["boed"], dataset, objects, amortized)
    preds = predictions_frame(rows)
    summary = summarise(preds, args.scans, list(POLICIES))
    paired_random = compare(preds, args.scans, reference="random", policies=list(POLICIES))
    paired_boed = compare(preds, args.scans, reference="boed", policies=["amortized"])
    kept = gain_kept(rows, args.scans, args.seed)
    meta = amortized.meta
    result = {
        "what": "amortized policy vs exact BOED and random (benchmarks/amortized.py)",
        "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "checkpoints": {
            "classifier": classifier.sha256,
            "sampler": sampler.sha256,
            "amortized": meta["sha256"],
            "amortized_trained_for": meta.get("parts"),
            "amortized_maps": {
                k: meta.get("maps", {}).get(k) for k in ("n_maps", "generation_seconds", "config")
            },
            "amortized_val_metrics": meta.get("metrics"),
        },
        "dataset": dataset.describe(),
        "warnings": warnings,
        "latency": lat,
        "summary": summary.replace({np.nan: None}).to_dict(orient="records"),
        "paired_vs_random": paired_random.replace({np.nan: None}).to_dict(orient="records"),
        "paired_amortized_vs_boed": paired_boed.replace({np.nan: None}).to_dict(orient="records"),
        "gain_kept": kept,
        "session_seconds": {p: statistics.median(r["seconds"] for r in rows[p]) for p in POLICIES},
        "wall_seconds": round(time.perf_counter() - t_run, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(
        f"latency: exact {lat['exact_median_s'] * 1e3:.0f} ms, "
        f"amortized {lat['amortized_median_s'] * 1e3:.2f} ms (x{lat['speedup']:.0f}) "
        f"over {lat['states']} states, {args.threads} thread(s)"
    )
    curve = summary[summary["policy"].isin(POLICIES)]
    for policy, sub in curve.groupby("policy", sort=False):
        cells = " ".join(
            f"{r.accuracy:.3f}[{r.accuracy_lo:.2f},{r.accuracy_hi:.2f}]"
            for r in sub.sort_values("scans").itertuples()
        )
        print(f"accuracy {policy:>9}: {cells}")
    for k in kept:
        print(
            f"scans {k['scans']}: boed gain {k['boed_gain']:+.3f}, "
            f"amortized gain {k['amortized_gain']:+.3f}, share kept {k['share_kept']:.2f} "
            f"[{k['share_kept_lo']:.2f}, {k['share_kept_hi']:.2f}]"
        )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
