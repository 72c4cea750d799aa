"""Benchmark: ``boed simulate`` sharded over K CPU ranks (torchrun, gloo) into one PostgreSQL store.

Starts a throwaway PostgreSQL server (``tests/pg.py``, the one the tests use), writes tiny
untrained checkpoints (the ``tiny`` presets: a 32 px AVP-CNN classifier and a 32 px AIPO sampler;
the throughput of the code path, not of a useful model), then runs the same simulation
(phantom test images x (full-image, boed, random)) once per ``--ranks`` value, each under
``python -m torch.distributed.run --standalone --nproc-per-node K -m cli.main simulate ...``
into its own schema of the one server, and reports for each K:

* ``sessions_per_minute_wall``: sessions / wall seconds of the whole torchrun job (process
  start-up, imports, loading the models, the run, the report table);
* ``sessions_per_minute_run``: sessions / the run's own ``total_s`` (rank 0, from the first
  session to the end-of-run gather): the steady-state rate;
* ``same_rows_as_first``: every stored row (sessions, steps with their EIG maps, predictions)
  equals that of the first K (exactly, floats included), i.e. the shards hold at K ranks;
* ``sessions_per_cpu_minute``: sessions / CPU seconds of the whole job (every rank and torchrun's
  agent, start-up included): what the work costs, whatever else runs on the machine;
* the store's peak number of connections (``pg_stat_activity``) while the job ran.

On a shared machine the run rates say more about the share of the cores a job gets than about
the code: K busy ranks take a larger share from the other jobs than one rank does.

Each rank uses one thread (``--threads 1``). The speed-up is bounded by the machine's cores: on a
2-core machine 8 ranks cannot be 8x faster than 1; the figure shows the store and the sharding
hold at 8 writers, and the per-rank rate on a machine with a core (or GPU) per rank is the
1-rank figure.

    .venv/bin/python benchmarks/scaleout.py [--ranks 1,8] [--images 48] [--scans 3]
        [--json benchmarks/results/scaleout.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    """An untrained tiny classifier (the phantom labels) and an untrained tiny AIPO sampler."""
    import dataclasses

    import torch

    from classifiers.avp_cnn import AVPCNN
    from classifiers.config import classifier_preset
    from classifiers.partial import save_classifier
    from datasets.labels import LABELS
    from generative.registry import untrained_checkpoint

    torch.manual_seed(0)
    config = dataclasses.replace(classifier_preset("tiny"), labels=tuple(LABELS), image_size=32)
    classifier = save_classifier(folder / "classifier", AVPCNN(config))
    sampler = untrained_checkpoint("aipo", folder / "sampler", preset="tiny")
    return Path(classifier), Path(sampler)


def rows(url: str) -> tuple[str, dict]:
    """The run id and every stored row of the store's latest run, without ids and timings."""
    from boed.store import Store

    with Store.open(url) as store:
        run_id = store.latest_run_id()
        steps = store.steps(run_id, status=None, eig_map=True)
        preds = store.predictions(run_id, status=None)
        sessions = store.sessions(run_id)
        keep = ["row", "col", "candidate", "eig", "eig_map", "eig_se", "ess"]
        return run_id, {
            "sessions": sorted(
                (r.image_id, r.policy, r.status, int(r.n_steps)) for r in sessions.itertuples()
            ),
            "steps": sorted(
                repr([r["image_id"], r["policy"], r["step"], *(r[k] for k in keep)])
                for r in steps.to_dict("records")
            ),  # fmt: skip
            "predictions": sorted(
                repr((r.image_id, r.policy, r.step, r.label, r.prob)) for r in preds.itertuples()
            ),
        }


class ConnectionWatch(threading.Thread):
    """Samples the server's client connections every 0.2 s; ``peak`` is the most seen at once."""

    def __init__(self, socket: Path):
        super().__init__(daemon=True)
        self.socket, self.peak, self.stop = socket, 0, threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(f"host={self.socket} user=boed dbname=boed", autocommit=True) as conn:
            while not self.stop.wait(0.2):
                (n,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                ).fetchone()
                self.peak = max(self.peak, int(n) - 1)  # less this watcher


def run_job(ranks: int, url: str, args, classifier: Path, sampler: Path, socket: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", str(ranks), "-m", "cli.main", "simulate", "--preset", "tiny",
           "--images", "phantoms", "--n-images", str(args.images), "--scans", str(args.scans),
           "--policy", "boed,random", "--seed", "0", "--classifier", str(classifier),
           "--sampler", "aipo", "--sampler-checkpoint", str(sampler), "--db", url, "--no-report",
           "--threads", "1", "--device", "cpu", "--figures", "0"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    watch = ConnectionWatch(socket)
    watch.start()
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    job = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    watch.stop.set()
    watch.join(5)
    if job.returncode != 0:
        raise SystemExit(f"{ranks} ranks failed (exit {job.returncode}):\n{job.stderr[-4000:]}")
    from boed.store import Store

    run_id, stored = rows(url)
    with Store.open(url) as store:
        run = store.get_run(run_id)
    n = len(stored["sessions"])
    run_s = float(run.timings["total_s"])
    return {
        "ranks": ranks,
        "run_id": run_id,
        "status": run.status,
        "sessions": n,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "load_average_before": round(load, 2),
        "run_s": round(run_s, 2),
        "sessions_per_minute_wall": round(60 * n / wall, 2),
        "sessions_per_minute_run": round(60 * n / run_s, 2),
        "sessions_per_minute_run_per_rank": round(60 * n / run_s / ranks, 2),
        "sessions_per_cpu_minute": round(60 * n / cpu, 2),
        "peak_store_connections": watch.peak,
        "_rows": stored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", default="1,8", help="comma-separated numbers of ranks")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scaleout.json")
    args = parser.parse_args()
    ranks = [int(k) for k in args.ranks.split(",")]
    from tests.pg import running_server

    results = []
    with tempfile.TemporaryDirectory() as tmp, running_server(max_connections=200) as server:
        classifier, sampler = tiny_checkpoints(Path(tmp))
        for k in ranks:
            result = run_job(k, server.new_url(), args, classifier, sampler, server.socket)
            print(json.dumps({key: v for key, v in result.items() if key != "_rows"}), flush=True)
            results.append(result)
    first = results[0]["_rows"]
    for r in results:
        r["same_rows_as_first"] = r.pop("_rows") == first
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = results[0]["sessions_per_minute_run"]
    out = {
        "benchmark": "scaleout",
        "preset": "tiny",
        "images": args.images,
        "scans": args.scans,
        "policies": ["full-image", "boed", "random"],
        "threads_per_rank": 1,
        "cores": cores,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.platform(),
        "runs": results,
        "speedup_run_vs_first": {
            str(r["ranks"]): round(r["sessions_per_minute_run"] / base, 2) for r in results
        },
        "notes": [
            "untrained tiny checkpoints (32 px AVP-CNN classifier, 32 px AIPO sampler), phantom test images",
            f"{cores} cores shared with other jobs: K ranks cannot run faster than min(K, cores) ranks; "
            "a speed-up beyond that is a larger share of the busy machine taken from the other jobs",
            "one throwaway PostgreSQL 15 server on a unix socket (tests/pg.py), one schema per run",
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
