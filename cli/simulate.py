"""``boed simulate`` (scan sessions over a dataset, logged to the store) and ``boed report``.

The only place where the controller (boed/) meets the implementations: the classifier
(``classifiers.load_classifier``) and the sampler (``generative.registry.build_sampler``) are
imported inside the commands.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from cli.common import (
    ALLOW_MODALITY_OPTION,
    ALLOW_SYMLINKS_OPTION,
    MAX_PIXELS_OPTION,
    SKIP_BAD_OPTION,
    console,
    dataset_options,
    err_console,
    recorded_split_seed,
    user_errors,
)

DEFAULT_N_IMAGES = 30
# measured (benchmarks/sessions.py, benchmarks/results/sessions.json): B = 2..4 saves ~13 % of the
# CPU time on 2 cores; B = 1 keeps every step reaching the store as it happens, so it stays the default
DEFAULT_BATCH_EPISODES = 1
OUT_HELP = (
    "Report folder (default runs/<run id>/). Checked before any work: it must be writable and hold "
    "no other run's report (one folder per run: its run id is kept in DIR/.boed-run)."
)
REPORT_MARK = ".boed-run"


def _load_parts(config: Any, device: str):
    """Classifier and (when a policy needs it) sampler for ``config``; names checked first."""
    from boed.policies import get_policy

    needs_sampler = any(get_policy(p).needs_eig for p in config.policies)
    if needs_sampler:
        from generative.registry import SAMPLERS

        if config.sampler not in SAMPLERS:
            from generative.errors import SamplerError

            raise SamplerError(f"unknown sampler {config.sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    from classifiers import load_classifier

    classifier = load_classifier(config.classifier_checkpoint, preset=config.preset, device=device)
    sampler = None
    if needs_sampler:
        from generative.registry import build_sampler

        sampler = build_sampler(
            config.sampler, config.sampler_checkpoint, preset=config.preset, device=device
        )
    return classifier, sampler


def _summary_table(summary, title: str):
    from rich.table import Table

    from boed.policies import FULL_IMAGE

    curves = summary[summary["policy"] != FULL_IMAGE]
    full = summary[summary["policy"] == FULL_IMAGE]
    scans = sorted(int(s) for s in curves["scans"].unique())
    table = Table(title=title, title_justify="left")
    table.add_column("scans:", no_wrap=True)
    for s in scans:
        table.add_column(str(s), justify="right", no_wrap=True)
    for key, name in (("accuracy", "accuracy"), ("auroc", "AUROC"), ("entropy", "entropy (nats)")):
        table.add_row(f"[bold]{name}[/bold]", *[""] * len(scans))
        for policy, sub in curves.groupby("policy", sort=False):
            values = [_fmt(v) for v in sub.sort_values("scans")[key]]
            table.add_row(f"  {policy} (n={int(sub['n'].iloc[0])})", *values)
        if not full.empty:
            v = _fmt(float(full[key].iloc[0]))
            table.add_row(f"  full image (n={int(full['n'].iloc[0])})", *[v] * len(scans), style="dim")
        if key != "entropy":
            table.add_section()
    _coverage_rows(table, curves, len(scans))
    return table


def _coverage_rows(table, curves, width: int) -> None:
    """Hit rate (where the run has positive located sessions) and fraction observed, per policy."""
    if "observed" not in curves:
        return
    for key, name in (("hit_rate", "hit rate"), ("observed", "fraction observed")):
        if not curves[key].notna().any():
            continue
        table.add_section()
        table.add_row(f"[bold]{name}[/bold]", *[""] * width)
        for policy, sub in curves.groupby("policy", sort=False):
            n = int(sub["hit_n"].fillna(0).iloc[0]) if key == "hit_rate" else int(sub["n"].iloc[0])
            table.add_row(f"  {policy} (n={n})", *[_fmt(v) for v in sub.sort_values("scans")[key]])
        if key == "observed":
            first = curves[curves["policy"] == curves["policy"].iloc[0]].sort_values("scans")
            cells = [_fmt(v) for v in first["observed_disjoint"]]
            table.add_row("  no overlap k·p²/S²", *cells, style="dim")


def _fmt(v: float) -> str:
    return "–" if v is None or math.isnan(float(v)) else f"{float(v):.3f}"


def _paired_table(paired):
    """Each policy minus the reference on the same images, per scan; ``*``: the paired 95% CI
    excludes 0 (the CIs themselves and McNemar's test are in paired.csv and the report)."""
    from rich.table import Table

    scans = sorted(int(s) for s in paired["scans"].unique())
    ref = str(paired["reference"].iloc[0])
    table = Table(title=f"minus {ref}, same images (* = paired 95% CI excludes 0)", title_justify="left")
    table.add_column("scans:", no_wrap=True)
    for s in scans:
        table.add_column(str(s), justify="right", no_wrap=True)
    keys = [("accuracy", "Δ accuracy"), ("auroc", "Δ AUROC"), ("log_loss", "Δ log loss")]
    keys.append(("brier", "Δ Brier"))
    if "hit_rate" in paired and paired["hit_rate"].notna().any():
        keys.append(("hit_rate", "Δ hit rate"))
    for key, name in keys:
        table.add_row(f"[bold]{name}[/bold]", *[""] * len(scans))
        for policy, sub in paired.groupby("policy", sort=False):
            cells = []
            for r in sub.sort_values("scans").itertuples():
                value, lo, hi = (float(getattr(r, k)) for k in (key, f"{key}_lo", f"{key}_hi"))
                star = "*" if not math.isnan(lo) and (lo > 0 or hi < 0) else " "
                cells.append("–" if math.isnan(value) else f"{value:+.3f}{star}")
            table.add_row(f"  {policy}", *cells)
        if key != keys[-1][0]:
            table.add_section()
    return table


def _print_results(summary, title: str, store, run_id: str) -> None:
    """The summary table, then the paired differences against random when the run has both."""
    from boed.report import load_paired

    console.print(_summary_table(summary, title))
    paired = load_paired(store, run_id)
    if not paired.empty:
        console.print(_paired_table(paired))
    from boed.report.build import first_decision, first_decision_line

    line = first_decision_line(first_decision(store, run_id))
    if line:
        console.print(line, highlight=False, soft_wrap=True)


def simulate(
    images: str = typer.Option(
        "chestxray",
        "--images",
        help="chestxray (NIH with --data-root, else phantoms), phantoms (= phantoms-v2), phantoms-v1, "
        "nih, dicom, folder.",
    ),
    policy: str = typer.Option(
        "boed,random,oracle",
        "--policy",
        help="Comma-separated: boed, random, raster, oracle (greedy with the truth: an upper bound), "
        "oracle-entropy, random-disjoint (random scans that do not overlap), boed-lcb (max of EIG - SE), "
        "amortized (a network's predicted EIG map; --amortized-checkpoint).",
    ),
    scans: int = typer.Option(5, "--scans", help="Scans per session."),
    n_images: int = typer.Option(DEFAULT_N_IMAGES, "--n-images", help="Test images to simulate."),
    n_samples: int | None = typer.Option(
        None,
        "--n-samples",
        help="Completions N per decision (preset: 10); refused when a decision's estimated memory "
        "(boed.simulate.decision_memory) exceeds what the device has free.",
    ),
    grid: int | None = typer.Option(
        None, "--grid", help="Candidate grid G x G (preset: 17); at most the scan positions per side."
    ),
    first_completions: int | None = typer.Option(
        None,
        "--first-completions",
        help="Completions N of the first decision, shared by every session and computed once per "
        "run (cpu preset: 200; other presets: --n-samples).",
    ),
    sampler: str = typer.Option("aipo", "--sampler", help="Sampler name (generative.registry)."),
    sampler_checkpoint: Path | None = typer.Option(
        None, "--sampler-checkpoint", help="Sampler checkpoint (default: the shipped one of the preset)."
    ),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Classifier checkpoint (default: shipped)."
    ),
    target: str = typer.Option(
        "any",
        "--target",
        help="The label the scans decide about, checked against the classifier's labels: one of "
        "them (case-insensitive; any = its Any output), or all (every label but Any).",
    ),
    preset: str = typer.Option("cpu", "--preset", help="cpu (64 px, 16 px scans) or paper (256/64)."),
    seed: int = typer.Option(0, "--seed"),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        help="Comma-separated seeds, e.g. 0,1,2: one run per seed (instead of --seed), then the "
        "spread: each seed's value and mean ± sd across seeds (seeds.csv). A seed draws the "
        "phantoms, the sampler's completions and the random choices.",
    ),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="NIH ChestX-ray14 / DICOM / folder root (or env BOED_DATA_ROOT)."
    ),
    db: str | None = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default runs/boed.db)."),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    resume: str | None = typer.Option(None, "--resume", help="Continue run RUN_ID with its stored config."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="With --resume: redo the run's failed sessions too (else kept)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    figures: int = typer.Option(3, "--figures", help="BOED sessions that keep Fig. 6 arrays."),
    stop_entropy: float | None = typer.Option(
        None,
        "--stop-entropy",
        help="Stop a session once the target entropy (nats) is below this (beyond the paper).",
    ),
    stop_eig: float | None = typer.Option(
        None,
        "--stop-eig",
        help="Stop once the best EIG (nats) is below this (policy amortized: its predicted EIG).",
    ),
    amortized_checkpoint: Path | None = typer.Option(
        None,
        "--amortized-checkpoint",
        help="Value network of policy amortized (default: boed/amortized/weights/phantom-cpu).",
    ),
    scans_per_step: int = typer.Option(
        1,
        "--scans-per-step",
        help="Scans chosen per decision (beyond the paper): each next one greedily, scored with the "
        "earlier ones observed in every completion; every scan is still logged as its own step.",
    ),
    batch_episodes: int = typer.Option(
        DEFAULT_BATCH_EPISODES,
        "--batch-episodes",
        help="Sessions of one policy run at once as the episodes of one batched environment "
        "(classifier calls batched across the images); the results do not depend on it.",
    ),
    no_report: bool = typer.Option(False, "--no-report", help="Do not write the HTML report."),
    threads: int = typer.Option(
        1,
        "--threads",
        help="CPU threads for torch (1: robust on shared machines; 0: torch's default, all cores).",
    ),
    runtime: str = typer.Option(
        "eager",
        "--runtime",
        help="Classifier inference runtime: eager (PyTorch, the reference), onnx (ONNX Runtime on the "
        "CPU: pip install 'boed-xray[onnx]'), compile (torch.compile); see docs/performance.md.",
    ),
    allow_training_images: bool = typer.Option(
        False,
        "--allow-training-images",
        help="Simulate even on images the classifier or sampler checkpoint was trained on "
        "(refused by default: the results would be optimistic).",
    ),
    split_seed: int | None = typer.Option(
        None,
        "--split-seed",
        help="Split seed of file sources (default: the one the classifier was trained with, else 0).",
    ),
    max_pixels: int | None = MAX_PIXELS_OPTION,
    allow_symlinks: bool = ALLOW_SYMLINKS_OPTION,
    allow_modality: list[str] | None = ALLOW_MODALITY_OPTION,
    skip_bad: bool = SKIP_BAD_OPTION,
) -> None:
    """Simulate scan sessions (BOED vs baselines) and print accuracy / AUROC / entropy vs scans.

    SIGTERM stops a run like Ctrl-C: it is marked interrupted and --resume continues it.
    Under torchrun the images are shared out across the ranks, which write to one store (a
    PostgreSQL URL in --db); rank 0 prints the results and writes the report (docs/scaling.md).
    """
    if seeds is not None:  # one run per seed, each this command with --seed, then their spread
        return _simulate_seeds(simulate, dict(locals()))
    with user_errors(), _sigterm_as_interrupt():
        from boed.config import get_preset
        from boed.eig import resolve_target
        from boed.errors import BoedError
        from boed.policies import parse_policies
        from boed.simulate import FIRST_COMPLETIONS, SimulationConfig, check_memory, check_parts

        t_start = time.perf_counter()
        if retry_failed and resume is None:
            raise BoedError("--retry-failed needs --resume RUN_ID")
        _set_threads(threads)
        dev = _device(device)
        ranks, dev = _join_ranks(dev, db)  # under torchrun: this rank; else the one process
        main = ranks.is_main  # rank 0 alone speaks, checks --out, marks the run done and reports
        if resume is not None:
            store = _open_store(db, ranks)
            config = SimulationConfig.from_dict(store.run_config(resume))
            check_memory(config, _available_memory(dev), dev)
            if not no_report and main:
                _check_out(out, resume)
            if main:
                err_console.print(f"resuming run {resume} with its stored config", style="yellow")
        else:
            pre = get_preset(preset)
            options = dataset_options(
                split_seed=split_seed,
                max_pixels=max_pixels,
                allow_symlinks=allow_symlinks,
                allow_modality=allow_modality,
                skip_bad=skip_bad,
            )
            config = SimulationConfig(
                images=images,
                split=split,
                data_root=str(data_root) if data_root else None,
                n_images=n_images,
                scans=scans,
                n_samples=pre.n_samples if n_samples is None else n_samples,
                grid=pre.grid if grid is None else grid,
                first_completions=(
                    FIRST_COMPLETIONS.get(pre.name) if first_completions is None else first_completions
                ),
                image_size=pre.image_size,
                patch_size=pre.patch_size,
                target=target,
                policies=parse_policies(policy),
                seed=seed,
                preset=pre.name,
                sampler=sampler,
                sampler_checkpoint=str(sampler_checkpoint) if sampler_checkpoint else None,
                classifier_checkpoint=str(classifier) if classifier else None,
                figure_sessions=figures,
                stop_entropy=stop_entropy,
                stop_eig=stop_eig,
                amortized_checkpoint=str(amortized_checkpoint) if amortized_checkpoint else None,
                scans_per_step=scans_per_step,
                batch_episodes=batch_episodes,
                allow_training_images=allow_training_images,
                runtime=runtime,
                **options,  # split_seed, max_pixels, allow_symlinks, allow_modalities, skip_bad
            )
            check_memory(config, _available_memory(dev), dev)
            if not no_report and main:
                _check_out(out, None)
            store = _open_store(db, ranks)
        clf, smp = _load_parts(config, dev)
        from classifiers.runtime import with_runtime

        clf = with_runtime(clf, config.runtime)  # the run's own (a resumed run keeps its runtime)
        resolve_target(config.target, list(clf.labels))  # the classifier's labels, before the data loads
        if resume is not None:
            _check_same_parts(store.get_run(resume), clf, smp)
        from datasets import DEFAULT_SPLIT_SEED, open_dataset

        if config.split_seed is None:  # the split the checkpoints were trained on keeps their images out
            recorded = recorded_split_seed(getattr(clf, "meta", None), getattr(smp, "meta", None))
            config = dataclasses.replace(
                config, split_seed=DEFAULT_SPLIT_SEED if recorded is None else recorded
            )
        dataset = open_dataset(
            config.images,
            split=config.split,
            size=config.image_size,
            n=config.n_images,
            data_root=config.data_root,
            seed=config.seed,
            **config.dataset_options(),
        )
        warnings = check_parts(config, smp, clf, dataset)
        for line in warnings if main else ():
            err_console.print(f"warning: {line}", style="yellow", highlight=False, soft_wrap=True)
        description = dataset.describe() | ({"warnings": warnings} if warnings else {})
        report_out = None if no_report or not main else out
        run_id = _run_with_progress(
            store, dataset, smp, clf, config, resume, description, retry_failed, report_out, ranks
        )
        if not main:  # rank 0 waited for this rank's share, marked the run and reports it
            err_console.print(f"rank {ranks.rank}: its share of run {run_id} is stored", style="dim")
            return
        from boed.report import build_report, load_target_summary

        run, tgt, summary = load_target_summary(store, run_id)
        wall = time.perf_counter() - t_start
        _print_results(
            summary,
            f"run {run_id}: {tgt.title} vs number of scans ({config.images}, {config.preset} preset)",
            store,
            run_id,
        )
        console.print(
            f"run {run_id} ({run.status}) in {wall:.0f} s wall; "
            f"{(run.timings or {}).get('failed_sessions', 0)} failed sessions; store: {store.url}"
        )
        if not no_report:
            console.print(f"report: {_write_report(build_report, store, run_id, out)}")
        return run_id


def _simulate_seeds(command, args: dict[str, Any]) -> None:
    """``boed simulate --seeds 0,1,2``: ``command`` once per seed (``--seed s``; reports in
    ``--out DIR/seed-s/``, else ``runs/<run id>/``), then the spread across the runs
    (``boed.report.metrics.seed_spread``): printed as mean ± sd, and written with each seed's
    value to ``seeds.csv`` (in ``--out DIR``, else ``runs/seeds-<first run id>/``)."""
    from boed.report.metrics import seed_spread

    with user_errors():
        from boed.errors import BoedError

        try:
            chosen = [int(v) for v in str(args["seeds"]).split(",") if v.strip()]
        except ValueError:
            raise BoedError(
                f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args['seeds']!r}"
            ) from None
        if not chosen or len(set(chosen)) != len(chosen):
            raise BoedError(f"--seeds needs distinct integers, e.g. 0,1,2; got {args['seeds']!r}")
        if args["resume"] is not None:
            raise BoedError("--seeds starts new runs; resume each seed's run with --resume RUN_ID alone")
        out = args["out"]
        if out is not None and not args["no_report"]:
            for s in chosen:
                _check_out(out / f"seed-{s}", None)
    run_ids = {}
    for s in chosen:
        err_console.print(f"seed {s} ({len(run_ids) + 1} of {len(chosen)})", style="bold")
        one = args | {"seeds": None, "seed": s, "out": None if out is None else out / f"seed-{s}"}
        run_ids[s] = command(**one)
    if any(run_id is None for run_id in run_ids.values()):  # a torchrun rank other than 0
        return
    with user_errors():
        from boed.report import load_target_summary
        from boed.store import Store

        store = Store.open(args["db"])
        summaries = {s: load_target_summary(store, run_id)[2] for s, run_id in run_ids.items()}
        spread = seed_spread(summaries)
        folder = out if out is not None else Path("runs") / f"seeds-{next(iter(run_ids.values()))}"
        folder.mkdir(parents=True, exist_ok=True)
        spread.to_csv(folder / "seeds.csv", index=False)
        (folder / "seeds-runs.csv").write_text(
            "seed,run_id\n" + "".join(f"{s},{r}\n" for s, r in run_ids.items()), encoding="utf-8"
        )
        console.print(_spread_table(spread, run_ids))
        console.print(f"seeds: {folder / 'seeds.csv'}")


def _spread_table(spread, run_ids: dict[int, str]):
    """Mean ± sd across seeds of accuracy, AUROC and the hit rate, per policy and scans."""
    from rich.table import Table

    curves = spread[spread["scans"].notna()]
    scans = sorted(int(s) for s in curves["scans"].unique())
    seeds = ", ".join(f"{s} ({r})" for s, r in run_ids.items())
    table = Table(title=f"mean ± sd over seeds {seeds}", title_justify="left")
    table.add_column("scans:", no_wrap=True)
    for s in scans:
        table.add_column(str(s), justify="right", no_wrap=True)
    for key, name in (("accuracy", "accuracy"), ("auroc", "AUROC"), ("hit_rate", "hit rate")):
        sub = curves[curves["metric"] == key]
        if sub.empty or not sub["mean"].notna().any():
            continue
        table.add_row(f"[bold]{name}[/bold]", *[""] * len(scans))
        for policy, rows in sub.groupby("policy", sort=False):
            rows = rows.sort_values("scans")
            cells = [
                "–" if math.isnan(m) else f"{m:.3f}±{d:.3f}" if not math.isnan(d) else f"{m:.3f}"
                for m, d in zip(rows["mean"], rows["sd"], strict=True)
            ]
            table.add_row(f"  {policy}", *cells)
        table.add_section()
    return table


def _join_ranks(dev: str, db: str | None):
    """``(ranks, device)``: this process's :class:`boed.runtime.distributed.Group` (under torchrun,
    joined now and left at exit; ``cuda`` becomes ``cuda:LOCAL_RANK``) and its device. Refuses a
    store the ranks cannot share (rank 0 prints the warnings of one they can)."""
    import atexit

    from boed.runtime.distributed import check_shared_store, init_group, rank_device

    ranks = init_group(dev)
    atexit.register(ranks.close)
    warnings = check_shared_store(db, ranks)  # raises on every rank alike
    for line in warnings if ranks.is_main else ():
        err_console.print(f"warning: {line}", style="yellow", highlight=False, soft_wrap=True)
    return ranks, rank_device(dev, ranks)


def _open_store(db: str | None, ranks: Any):
    """The store at ``db``; with several ranks rank 0 opens (creates, migrates) it first, then the
    others open it without migrating, so no two ranks run the migrations at once."""
    from boed.store import Store

    if not ranks.enabled:
        return Store.open(db)
    opened: list[Any] = []
    ranks.on_main(lambda: opened.append(Store.open(db)), "open the store")
    return opened[0] if opened else Store.open(db, migrate=False)


def _check_out(out: Path | None, run_id: str | None) -> None:
    """Before any work: the report folder (``--out``, else ``runs/``) can be created and written
    (a probe file), and ``--out`` holds no other run's report (``run_id`` None: a new run)."""
    _check_owner(out, _check_writable(out), run_id)


def _check_owner(out: Path | None, folder: Path, run_id: str | None) -> None:
    """``--out`` must hold no other run's report (the default folder ``runs/`` is shared)."""
    from boed.errors import BoedError

    owner = _other_report(folder, run_id) if out is not None else None
    if owner is not None:
        raise BoedError(
            f"--out {folder} already holds the report of {owner}; give each run its own folder "
            "(or remove that report)"
        )


def _check_writable(out: Path | None) -> Path:
    """Create the report folder (``--out``, else ``runs/``) and write a probe file there."""
    import tempfile

    from boed.errors import BoedError

    folder = out if out is not None else Path("runs")
    what = f"--out {folder}" if out is not None else f"the report folder {folder}/ (default of --out)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".boed-probe-"):
            pass
    except OSError as exc:
        raise BoedError(f"{what}: cannot write the report there: {exc.strerror or exc}") from None
    return folder


def _other_report(folder: Path, run_id: str | None) -> str | None:
    """Whose report ``folder`` holds when it is not ``run_id``'s ("run X", or "an earlier run" for
    a report written without a mark in a folder not named after the run); None if none or its own."""
    mark = folder / REPORT_MARK
    if mark.is_file():
        owner = mark.read_text(encoding="utf-8", errors="replace").strip()
        return None if owner == run_id else f"run {owner}"
    if (folder / "index.html").exists() and folder.name != run_id:
        return "an earlier run (no run mark)"
    return None


def _claim_out(out: Path | None, run_id: str) -> None:
    """Mark ``--out`` as the report folder of ``run_id`` as soon as the run exists."""
    if out is not None and _other_report(out, run_id) is None:
        (out / REPORT_MARK).write_text(run_id + "\n", encoding="utf-8")


def _write_report(build_report, store, run_id: str, out: Path | None) -> Path:
    """The report into ``--out`` (else runs/<run id>/), unless another run took the folder meanwhile."""
    from boed.errors import BoedError

    folder = out if out is not None else Path("runs") / run_id
    owner = _other_report(folder, run_id) if out is not None else None
    if owner is not None:
        raise BoedError(
            f"--out {folder} now holds the report of {owner}; run {run_id} is stored: write its "
            f"report elsewhere with boed report {run_id} --out OTHER_FOLDER"
        )
    index = build_report(store, run_id, folder)
    if out is not None:
        (folder / REPORT_MARK).write_text(run_id + "\n", encoding="utf-8")
    return index


def _available_memory(device: str) -> int | None:
    """Free bytes for a decision: the GPU's free memory for cuda, else the host's MemAvailable."""
    import os

    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`boed.simulate.Terminated` (a KeyboardInterrupt): the run is marked
    interrupted, the resume command printed, exit 143. Later SIGTERMs are ignored while that
    cleanup runs; the previous handler comes back at the end."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from boed.simulate import Terminated

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        err_console.print("terminated (SIGTERM)", style="yellow")
        raise typer.Exit(143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _set_threads(threads: int) -> None:
    """Many small classifier calls with several threads on a busy machine stall for a whole
    scheduler slice each (measured here: ~1 s per call with 2 threads next to other jobs)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _device(name: str) -> str:
    from boed.runtime.devices import resolve_device

    return str(resolve_device(name))


def _check_same_parts(run: Any, classifier: Any, sampler: Any) -> None:
    from boed.errors import BoedError

    pairs = [("classifier", run.classifier_sha256, getattr(classifier, "sha256", None))]
    if sampler is not None:
        pairs.append(("sampler", run.sampler_sha256, getattr(sampler, "sha256", None)))
    for what, stored, now in pairs:
        if stored and now and stored != now:
            raise BoedError(
                f"cannot resume run {run.run_id}: its {what} checkpoint was {stored[:12]}…, "
                f"the one found now is {now[:12]}…"
            )


def _run_with_progress(
    store,
    dataset,
    sampler,
    classifier,
    config,
    resume,
    description=None,
    retry_failed=False,
    out=None,
    ranks=None,
):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from boed.simulate import StoreFault, run_simulation

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    quiet = ranks is not None and not ranks.is_main  # one progress bar per job: rank 0's share
    with Progress(*columns, console=err_console, transient=True, disable=quiet) as bar:
        task = bar.add_task("sessions", total=None)

        def update(p):
            bar.update(
                task,
                total=p.total,
                completed=p.done,
                description=f"image {p.image_index + 1}, {p.policy}"
                + (f" ({p.failures} failed)" if p.failures else ""),
            )

        started: list[str] = []

        def on_start(run_id: str) -> None:
            started.append(run_id)
            _claim_out(out, run_id)

        try:
            return run_simulation(
                store,
                dataset,
                sampler,
                classifier,
                config,
                run_id=resume,
                dataset_description=description if description is not None else dataset.describe(),
                progress=update,
                on_start=on_start,
                retry_failed=retry_failed,
                ranks=ranks,
            )
        except StoreFault as exc:  # one line with the resume command for this database
            raise StoreFault(exc.run_id, exc.cause, exc.marked, db=store.url) from None
        except KeyboardInterrupt:
            if started:
                err_console.print(
                    f"run {started[0]} interrupted; continue it with: boed simulate --resume {started[0]}"
                    + (f" --db {store.url}" if getattr(store, "url", None) else ""),
                    style="yellow",
                    highlight=False,
                    soft_wrap=True,
                )
            raise


def report(
    run_id: str = typer.Argument(..., help="Run id (or 'latest')."),
    db: str | None = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default runs/boed.db)."),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """Rebuild a run's report (Fig. 5, Fig. 6 PNGs, index.html) from the store alone."""
    with user_errors():
        from boed.errors import BoedError
        from boed.report import build_report, load_target_summary
        from boed.store import Store

        folder = _check_writable(out)
        store = Store.open(db)
        if run_id == "latest":
            run_id = store.latest_run_id() or ""
            if not run_id:
                raise BoedError("the store has no runs")
        _check_owner(out, folder, run_id)
        _, tgt, summary = load_target_summary(store, run_id)
        index = _write_report(build_report, store, run_id, out)
        _print_results(summary, f"run {run_id}: {tgt.title} vs number of scans", store, run_id)
        console.print(f"report: {index}")


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``report`` to the ``boed`` app."""
    app.command("simulate")(simulate)
    app.command("report")(report)
