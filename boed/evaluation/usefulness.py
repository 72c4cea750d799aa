"""Usefulness for BOED: the real simulation (``boed.simulate.run_simulation``) once per sampler.

Every sampler's run scans the same images with the same seed, policy ``boed`` only; one more
run holds the ``random`` reference (it needs no sampler, and a session's generator is seeded
from ``(seed, image, policy)``, so it is the random policy of every sampler's run). The runs
live in one store (``DIR/boed.db``) and their ids in ``DIR/boed-runs.json``, so an interrupted
evaluation resumes each run where it stopped (``run_simulation(run_id=...)``).

The predictions of all runs are then read as one table whose policy is the sampler's name
(``random`` for the reference), and :func:`boed.report.metrics.summarise` / ``compare`` give
accuracy, log loss (and every other metric the summary has, e.g. the hit rate) after 0..T scans
with 95 % bootstrap CIs, and the paired differences against ``random`` and against the reference
sampler (default ``aipo``) image by image.

A deterministic sampler (n identical completions) is simulated with N = 1: its EIG estimate
(Eq. 17) is then exactly the one with N identical draws, at 1/N of the classifier calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from boed.errors import BoedError

REFERENCE_RUN = "random"


def _read_runs(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BoedError(f"{path}: unreadable list of simulation runs ({exc}); move it away") from None
    return {str(k): str(v) for k, v in data.items()}


def _write_runs(path: Path, runs: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(runs, indent=1))
    os.replace(tmp, path)


def run_config(base: Any, name: str, deterministic: bool = False, checkpoint: str | None = None) -> Any:
    """The :class:`~boed.simulate.SimulationConfig` of sampler ``name``'s run (or the reference's)."""
    if name == REFERENCE_RUN:
        return dataclasses.replace(base, policies=("random",), sampler="none", sampler_checkpoint=None)
    n = 1 if deterministic else base.n_samples
    return dataclasses.replace(
        base, policies=("boed",), sampler=name, n_samples=n, sampler_checkpoint=checkpoint
    )


def simulate(
    store: Any,
    dataset: Any,
    classifier: Any,
    base: Any,
    samplers: dict[str, tuple[Callable[[], Any], bool, str | None]],
    runs_file: Path,
    *,
    progress: Callable[[str, Any], None] | None = None,
) -> dict[str, str]:
    """Run (or resume) the reference run and one run per sampler; return ``{name: run_id}``.

    ``samplers`` maps a name to ``(build () -> sampler, deterministic, checkpoint path or None)``
    (the order is the order of the runs); ``base`` is the
    simulation config every run shares (images, scans, seed, grid, N, target). A run already
    ``done`` with the same config is kept; one with another config is refused (BoedError naming
    ``runs_file``), so results of different settings never mix.
    """
    from boed.simulate import SimulationConfig, run_simulation

    runs = _read_runs(runs_file)
    for name, (build, deterministic, checkpoint) in {
        REFERENCE_RUN: (lambda: None, False, None),
        **samplers,
    }.items():
        config = run_config(base, name, deterministic, checkpoint)
        run_id = runs.get(name)
        if run_id is not None:
            try:
                stored = SimulationConfig.from_dict(store.run_config(run_id))
            except Exception as exc:  # noqa: BLE001 - a run id the store does not know
                raise BoedError(
                    f"{runs_file}: run {run_id} of {name!r} is not in the store ({exc})"
                ) from None
            if stored != config:
                differ = [k for k, v in config.to_dict().items() if stored.to_dict().get(k) != v]
                raise BoedError(
                    f"{runs_file}: the {name!r} run {run_id} was simulated with other settings "
                    f"({', '.join(differ)}); use another --out"
                )
            if store.get_run(run_id).status == "done":
                continue
        sampler = build()

        def on_start(rid: str, name: str = name) -> None:
            runs[name] = rid  # re-read first: another invocation on other samplers may share the file
            _write_runs(runs_file, _read_runs(runs_file) | {name: rid})

        run_simulation(
            store,
            dataset,
            sampler,
            classifier,
            config,
            run_id=run_id,
            on_start=on_start,
            progress=None if progress is None else (lambda p, name=name: progress(name, p)),
        )
    return {name: runs[name] for name in (REFERENCE_RUN, *samplers) if name in runs}


def predictions(store: Any, runs: dict[str, str], label: str) -> pd.DataFrame:
    """One long prediction table of every run for ``label``: policy ``boed`` renamed to its sampler."""
    frames = []
    for name, run_id in runs.items():
        df = store.predictions(run_id, label=label)
        if frames:  # the full-image reference is the same in every run: keep the first run's
            df = df[df["policy"] != "full-image"]
        if name != REFERENCE_RUN:
            df = df.assign(policy=df["policy"].where(df["policy"] != "boed", name))
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def tables(
    store: Any, runs: dict[str, str], label: str, scans: int, reference: str = "aipo"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, paired)``: :func:`boed.report.metrics.summarise` of every sampler and random,
    and the paired differences of every sampler against ``random`` and against ``reference``."""
    from boed.report.metrics import compare, summarise

    pred = predictions(store, runs, label)
    order = [REFERENCE_RUN, *(n for n in runs if n != REFERENCE_RUN)]
    summary = summarise(pred, scans, order)
    paired = [compare(pred, scans, REFERENCE_RUN, order)]
    if reference in runs and reference != REFERENCE_RUN:
        paired.append(compare(pred, scans, reference, [n for n in order if n != REFERENCE_RUN]))
    paired = [p for p in paired if len(p)]
    return summary, (pd.concat(paired, ignore_index=True) if paired else pd.DataFrame())
