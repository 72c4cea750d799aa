"""``boed evaluate-samplers``: every sampler on the same held-out images and masks, in one table.

Composes the parts (samplers from ``generative.registry``, the classifier from ``classifiers``)
and hands them to :mod:`boed.evaluation`; see docs/evaluation.md for what each column means.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer

from cli.common import (
    ALLOW_TRAINING_IMAGES_OPTION,
    console,
    dataset_options,
    err_console,
    fail,
    recorded_split_seed,
    user_errors,
)

DEFAULT_SAMPLERS = "aipo,pixel-constrained,harmonic,tv,mean,retrieval"


def _pairs(values: list[str] | None, option: str, cast=str) -> dict[str, Any]:
    """``NAME=VALUE`` options as a dict (one clear error line for a malformed one)."""
    out: dict[str, Any] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise fail(f"{option}: expected NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = cast(value.strip())
        except ValueError:
            raise fail(f"{option}: bad value in {item!r}") from None
    return out


def _scorers():
    from boed.evaluation.engine import Scorers
    from generative.evaluation import pairwise_distance
    from generative.metrics import fidelity, summarise

    return Scorers(fidelity=fidelity, summarise=summarise, pairwise=pairwise_distance)


def _artifact(
    name: str, out: Path, images: str, preset: str, size: int, n_train: int, seed: int, options: dict
) -> Path:
    """Build (once) the data artifact of sampler ``name`` (mean image, retrieval index) from
    ``n_train`` training images into ``out/artifacts/<name>``."""
    from boed.runtime.checkpoints import checkpoint_paths
    from boed.runtime.provenance import describe, trained_on
    from datasets import open_dataset
    from generative.registry import get_spec

    stem = out / "artifacts" / name
    if checkpoint_paths(stem)[1].is_file():
        return stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(images, split="train", size=size, n=n_train, seed=seed, **options)
    x, _ = ds.tensors()
    from generative.registry import _resolve

    return _resolve(get_spec(name).artifact)(
        x, stem, data={"train": describe(ds)}, trained_on=trained_on(ds, size)
    )


def evaluate_samplers_command(
    out: Path = typer.Option(
        ..., "--out", help="Folder for the tables, figures, index.html and the per-sampler cache (resumable)."
    ),
    samplers: str = typer.Option(
        DEFAULT_SAMPLERS, "--samplers", help="Comma-separated sampler names (`boed samplers`)."
    ),
    checkpoint: list[str] | None = typer.Option(
        None,
        "--checkpoint",
        help="NAME=PATH: a sampler's checkpoint or artifact (default: the shipped one; "
        "mean / retrieval: built from --n-train training images into DIR/artifacts).",
    ),
    images: str = typer.Option("chestxray", "--images", help="Image source (datasets.open_dataset)."),
    masks: str = typer.Option(
        "holes",
        "--masks",
        help="Mask settings beyond squares-0..5: holes, aipo, three_squares, blob, centre_square.",
    ),
    n_images: int = typer.Option(100, "--n-images", help="Held-out test images."),
    n_samples: int = typer.Option(10, "--n-samples", help="Completions per input."),
    max_images: list[str] | None = typer.Option(
        None,
        "--max-images",
        help="NAME=K: evaluate sampler NAME on the first K images only (a slow sampler).",
    ),
    boed_images: int = typer.Option(
        30, "--boed-images", help="Images of the BOED simulation per sampler (0: none)."
    ),
    boed_samplers: str | None = typer.Option(
        None, "--boed-samplers", help="Samplers simulated (default: every evaluated one)."
    ),
    parts: str = typer.Option(
        "quality,boed",
        "--parts",
        help="quality (the metrics), boed (the simulations) or both; a `boed` invocation beside a "
        "`quality` one on the same --out runs them in parallel, a last one with both merges.",
    ),
    scans: int = typer.Option(5, "--scans", help="Scans per simulated session."),
    reference: str = typer.Option("aipo", "--reference", help="Sampler the others are paired against."),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Classifier checkpoint (default: shipped)."
    ),
    preset: str = typer.Option("cpu", "--preset"),
    seed: int = typer.Option(0, "--seed"),
    chunk_size: int = typer.Option(25, "--chunk-size", help="Images per cached chunk."),
    grid_images: int = typer.Option(2, "--grid-images", help="Test images in the sample grids."),
    n_train: int = typer.Option(
        1000, "--n-train", help="Training images for a mean image / retrieval index built here."
    ),
    target: str = typer.Option("any", "--target", help="The label calibration and the simulation are about."),
    threads: int = typer.Option(1, "--threads", help="torch threads (0: torch's default)."),
    device: str = typer.Option("auto", "--device"),
    data_root: Path | None = typer.Option(None, "--data-root"),
    split_seed: int | None = typer.Option(None, "--split-seed"),
    allow_training_images: bool = ALLOW_TRAINING_IMAGES_OPTION,
) -> None:
    """Compare samplers on the same held-out images and masks: fidelity, diversity, realism, calibration,
    likelihood, cost and usefulness for BOED; tables, curves, grids and an offline index.html.

    Under torchrun each rank evaluates its share of every sampler's chunks into the --out cache
    (a folder every rank sees); rank 0 merges them and writes the tables, the BOED simulation and
    the page (docs/scaling.md)."""
    with user_errors():
        t_start = time.perf_counter()
        import pandas as pd
        import torch

        from boed.eig import resolve_target
        from boed.evaluation import engine, report, summary, usefulness
        from classifiers import load_classifier
        from cli.simulate import _device, _set_threads
        from datasets import DEFAULT_SPLIT_SEED, open_dataset
        from datasets.provenance import check_training_data
        from generative.registry import build_sampler, get_spec

        names = [s.strip() for s in samplers.split(",") if s.strip()]
        if not names or len(set(names)) != len(names):
            raise fail(f"--samplers: give distinct sampler names, got {samplers!r}")
        specs = {n: get_spec(n) for n in names}
        ckpts = _pairs(checkpoint, "--checkpoint", Path)
        caps = _pairs(max_images, "--max-images", int)
        for opt, d in (("--checkpoint", ckpts), ("--max-images", caps)):
            unknown = sorted(set(d) - set(names))
            if unknown:
                raise fail(f"{opt}: {', '.join(unknown)} not in --samplers")
        simulated = (
            names if boed_samplers is None else [s.strip() for s in boed_samplers.split(",") if s.strip()]
        )
        if set(simulated) - set(names):
            raise fail(f"--boed-samplers: {', '.join(sorted(set(simulated) - set(names)))} not in --samplers")
        for name, value in (("--n-images", n_images), ("--n-samples", n_samples), ("--scans", scans)):
            if value < 1:
                raise fail(f"{name} must be at least 1, got {value}")
        if boed_images < 0:
            raise fail(f"--boed-images must be >= 0, got {boed_images}")
        wanted = {p.strip() for p in parts.split(",") if p.strip()}
        if not wanted or wanted - {"quality", "boed"}:
            raise fail(f"--parts: give quality, boed or both, got {parts!r}")
        settings = (
            *engine.SQUARE_SETTINGS,
            *dict.fromkeys(
                engine.normalise_setting(m)
                for m in masks.split(",")
                if m.strip() and engine.normalise_setting(m) not in engine.SQUARE_SETTINGS
            ),
        )
        dev = _device(device)
        out.mkdir(parents=True, exist_ok=True)
        _set_threads(threads)
        ranks, dev = _join_ranks(dev)  # under torchrun: this rank's share of the chunks
        clf = load_classifier(classifier, preset=preset, device=dev)
        tgt = resolve_target(target, list(clf.labels))
        if len(tgt.labels) != 1:
            raise fail(f"--target {target}: the evaluation needs one label, got {len(tgt.labels)}")
        label = tgt.labels[0]
        if split_seed is None:
            recorded = recorded_split_seed(getattr(clf, "meta", None))
            split_seed = DEFAULT_SPLIT_SEED if recorded is None else recorded
        options = dataset_options(split_seed=split_seed)
        ds = open_dataset(
            images, split="test", size=clf.image_size, n=n_images, data_root=data_root, seed=seed, **options
        )
        x, _ = ds.tensors()
        description = ds.describe()
        config = engine.EvalConfig(
            settings=settings, n_samples=n_samples, seed=seed, chunk_size=chunk_size, target=label
        )
        scorers = _scorers()

        def build(name: str):
            path = ckpts.get(name)
            if path is None and specs[name].artifact and not specs[name].shipped:
                path = _artifact(name, out, images, preset, clf.image_size, n_train, seed, options)
            smp = build_sampler(name, path, preset=preset, device=dev)
            provenance[name] = check_training_data(
                getattr(smp, "meta", {}).get("data"),
                description,
                what=str(path or f"the shipped {name}"),
                allow_overlap=allow_training_images,
            )
            return smp

        results, grids, provenance = [], {}, {}
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        plan = {n: engine.chunks(min(caps.get(n, len(x)), len(x)), chunk_size) for n in names}
        mine = {n: ranks.shard(chunks) for n, chunks in plan.items()}  # all of them on one process
        total = sum(len(v) for v in mine.values())
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=not ranks.is_main,
        ) as bar:
            task = bar.add_task("samplers", total=total)
            for name in names if "quality" in wanted else []:
                bar.update(task, description=f"{name}: loading")
                smp = _rank0_first(ranks, lambda n=name: build(n), "load the sampler")  # artifacts once
                fp = config.fingerprint(
                    sampler_sha256=getattr(smp, "sha256", None),
                    classifier_sha256=clf.sha256,
                    data=description.get("fingerprint"),
                    n_images=len(x),
                    cap=caps.get(name),
                )
                cache = _rank0_first(
                    ranks, lambda n=name, f=fp: engine.ChunkCache(out / "cache", n, f), "open the cache"
                )
                bar.update(task, description=f"{name}: chunks")
                if mine[name] or not ranks.enabled:  # a rank with no chunk (an empty list means all)
                    arrays = engine.evaluate_sampler(
                        smp,
                        clf,
                        x,
                        config,
                        scorers,
                        cache,
                        indices=mine[name],
                        on_chunk=lambda a, b, cached: bar.advance(task),
                    )
                if ranks.enabled:  # every rank's chunks are in the cache; rank 0 merges them all
                    ranks.barrier()
                    if not ranks.is_main:
                        del smp
                        continue
                    arrays = engine.evaluate_sampler(smp, clf, x, config, scorers, cache, indices=plan[name])
                cost = cache.read_json("cost.json")
                if cost is None:
                    m = engine.setting_masks("squares-2", 1, x.shape[-1], torch.Generator().manual_seed(seed))
                    cost = engine.measure_cost(smp, x[:1], m, n=10)
                    cache.write_json("cost.json", cost)
                grid_path = cache.folder / "grid.safetensors"
                if grid_path.is_file():
                    from safetensors.torch import load_file

                    g = load_file(grid_path)
                    g["setting"] = json.loads(cache.read_json("grid.json")["setting"])
                else:
                    g = engine.grid_samples(
                        smp, x[:grid_images], ("squares-1", "squares-3", "holes"), n=5, seed=seed
                    )
                    from safetensors.torch import save_file

                    save_file({k: v.contiguous() for k, v in g.items() if k != "setting"}, grid_path)
                    cache.write_json("grid.json", {"setting": json.dumps(g["setting"])})
                grids[name] = g
                notes = list(provenance.get(name, []))
                if name in caps:
                    notes.append(f"first {len(arrays['index'])} images only (--max-images)")
                results.append(engine.SamplerResult(name, arrays, cost, notes, specs[name].deterministic))
                del smp

        if not ranks.is_main:
            err_console.print(f"rank {ranks.rank}: its chunks are in {out / 'cache'}", style="dim")
            return
        rows = [summary.headline(r, settings, list(clf.labels).index(label), scorers, seed) for r in results]
        per_setting = [
            row
            for r in results
            for row in summary.setting_rows(r, settings, list(clf.labels).index(label), scorers, seed)
        ]
        table = pd.DataFrame(rows)
        settings_table = pd.DataFrame(per_setting)
        boed_summary = paired = None
        if boed_images > 0 and simulated and "boed" in wanted:
            from boed.config import get_preset
            from boed.simulate import SimulationConfig
            from boed.store import Store

            pre = get_preset(preset)
            base = SimulationConfig(
                images=images,
                n_images=boed_images,
                scans=scans,
                n_samples=n_samples,
                grid=pre.grid,
                image_size=pre.image_size,
                patch_size=pre.patch_size,
                target=target,
                seed=seed,
                preset=pre.name,
                classifier_checkpoint=str(classifier) if classifier else None,
                data_root=str(data_root) if data_root else None,
                figure_sessions=0,
                allow_training_images=allow_training_images,
                split_seed=split_seed,
            )
            sim_ds = open_dataset(
                images,
                split="test",
                size=clf.image_size,
                n=boed_images,
                data_root=data_root,
                seed=seed,
                **options,
            )
            store = Store.open(str(out / "boed.db"))
            factories = {}
            for n in simulated:
                ck = ckpts.get(n)
                if ck is None and specs[n].artifact and not specs[n].shipped:
                    ck = out / "artifacts" / n
                factories[n] = (lambda n=n: build(n), specs[n].deterministic, str(ck) if ck else None)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("simulation", total=(len(simulated) + 1) * boed_images * 2)
                runs = usefulness.simulate(
                    store,
                    sim_ds,
                    clf,
                    base,
                    factories,
                    out / "boed-runs.json",
                    progress=lambda name, p: bar.update(task, description=f"simulate {name}", advance=1),
                )
            boed_summary, paired = usefulness.tables(store, runs, label, scans, reference)
            boed_summary.to_csv(out / "boed_summary.csv", index=False)
            paired.to_csv(out / "boed_paired.csv", index=False)
        if "quality" not in wanted:
            console.print(f"simulations in {out / 'boed.db'} ({time.perf_counter() - t_start:.0f} s wall)")
            return
        if boed_summary is not None:
            table = report.boed_columns(table, boed_summary, paired, scans)
        table.to_csv(out / "table.csv", index=False)
        settings_table.to_csv(out / "settings.csv", index=False)
        md = report.markdown_table(table, scans, reference)
        (out / "table.md").write_text(md)
        figures = {
            "curves": report.plot_curves(settings_table, out / "curves.png"),
            "ranks": report.plot_ranks(table, out / "ranks.png"),
            "grid": report.plot_grid(grids, out / "grid.png"),
        }
        if boed_summary is not None:
            figures["boed"] = report.plot_boed(boed_summary, out / "boed.png")
        wall = time.perf_counter() - t_start
        meta = {
            "command": "boed " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "images": f"{images} test split, {len(x)} images ({description.get('fingerprint', '')[:12]})",
            "settings": ", ".join(settings),
            "completions per input": n_samples,
            "classifier": f"{clf.name} ({(clf.sha256 or '')[:12]})",
            "target": label,
            "BOED simulation": f"{boed_images} images x {scans} scans" if boed_images else "none",
            "seed": seed,
            "wall seconds (this invocation)": f"{wall:.0f}",
        }
        page = report.write_page(
            out,
            title="Sampler evaluation",
            meta=meta,
            table_md=md,
            table=table,
            settings=settings_table,
            figures=figures,
            boed_summary=boed_summary,
            paired=paired,
        )
        (out / "run.json").write_text(json.dumps(meta | {"wall_seconds": wall}, indent=1))
        console.print(md, highlight=False, soft_wrap=True)
        console.print(f"wrote {page} ({wall:.0f} s wall)", highlight=False)


def _rank0_first(ranks: Any, fn: Any, what: str) -> Any:
    """``fn()`` on rank 0, then on the other ranks (so a file or folder it makes is made once)."""
    made: list[Any] = []
    ranks.on_main(lambda: made.append(fn()), what)
    return made[0] if made else fn()


def _join_ranks(dev: str):
    """``(ranks, device)`` of this process (:func:`boed.runtime.distributed.init_group`; under
    torchrun joined now and left at exit, ``cuda`` becoming ``cuda:LOCAL_RANK``)."""
    import atexit

    from boed.runtime.distributed import init_group, rank_device

    ranks = init_group(dev)
    atexit.register(ranks.close)
    return ranks, rank_device(dev, ranks)


def register(app: typer.Typer) -> None:
    """Add ``evaluate-samplers`` to the ``boed`` app."""
    app.command("evaluate-samplers")(evaluate_samplers_command)
