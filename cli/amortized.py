"""``boed amortized-maps`` (the EIG-map dataset) and ``boed amortized-train`` (the value network).

The amortised policy of ``boed/amortized/`` (beyond the paper): the maps are made by the exact
controller on training images with the shipped (or given) classifier and sampler, the network is
trained by regression on them and written as a checkpoint pair that ``boed simulate --policy
amortized`` loads (``--amortized-checkpoint``, default the shipped one).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, err_console, user_errors


def amortized_maps(
    out: Path = typer.Option(..., "--out", help="Folder of the map dataset (created; resumed if it exists)."),
    images: str = typer.Option("phantoms", "--images", help="Image source; its train split only."),
    n_images: int = typer.Option(200, "--n-images", help="Sessions: one per training image."),
    scans: int = typer.Option(5, "--scans", help="Decisions (maps) per session."),
    n_samples: int | None = typer.Option(
        None, "--n-samples", help="Completions N per decision (preset: 10)."
    ),
    prior_samples: int | None = typer.Option(
        None, "--prior-samples", help="Completions of the shared first decision (default 4 N)."
    ),
    epsilon: float = typer.Option(
        0.5, "--epsilon", help="Probability that a scan is random instead of the map's argmax."
    ),
    chunk: int = typer.Option(4, "--chunk", help="Sessions per chunk (decided together, saved together)."),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Classifier checkpoint (default: shipped)."
    ),
    sampler: str = typer.Option("aipo", "--sampler", help="Sampler name (generative.registry)."),
    sampler_checkpoint: Path | None = typer.Option(
        None, "--sampler-checkpoint", help="Sampler checkpoint (default: the shipped one of the preset)."
    ),
    target: str = typer.Option("any", "--target", help="any, all or a label of the classifier."),
    preset: str = typer.Option("cpu", "--preset", help="cpu or paper."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (0: torch's default)."),
    runtime: str = typer.Option(
        "eager",
        "--runtime",
        help="Classifier inference runtime: eager (the reference) or onnx (about twice as fast on a "
        "CPU, the same maps to float rounding; docs/performance.md).",
    ),
) -> None:
    """Make the EIG-map dataset: exact-BOED decisions on training images (resumable, progress bar)."""
    with user_errors():
        import torch

        from boed.amortized.dataset import MapConfig, generate_maps
        from boed.config import get_preset
        from boed.eig import resolve_target
        from boed.runtime.devices import resolve_device
        from boed.simulate import check_provenance
        from classifiers import load_classifier
        from datasets import open_dataset
        from generative.registry import SAMPLERS, build_sampler

        if threads > 0:
            torch.set_num_threads(threads)
        pre = get_preset(preset)
        n = pre.n_samples if n_samples is None else n_samples
        config = MapConfig(
            images=images,
            n_images=n_images,
            scans=scans,
            n_samples=n,
            prior_samples=4 * n if prior_samples is None else prior_samples,
            grid=pre.grid,
            image_size=pre.image_size,
            patch_size=pre.patch_size,
            target=target,
            epsilon=epsilon,
            chunk=chunk,
            seed=seed,
            preset=pre.name,
            sampler=sampler,
        )
        if sampler not in SAMPLERS:
            from generative.errors import SamplerError

            raise SamplerError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
        dev = str(resolve_device(device))
        clf = load_classifier(classifier, preset=pre.name, device=dev)
        from classifiers.runtime import with_runtime

        clf = with_runtime(clf, runtime)
        resolve_target(target, list(clf.labels))
        smp = build_sampler(sampler, sampler_checkpoint, preset=pre.name, device=dev)
        dataset = open_dataset(images, split="train", size=pre.image_size, n=n_images, seed=seed)
        for line in check_provenance({"classifier": clf, "sampler": smp}, dataset.describe(), True):
            if "trained on these images" in line:
                continue  # the maps are made on training images on purpose: only other data is news
            err_console.print(f"warning: {line}", style="yellow", highlight=False, soft_wrap=True)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("maps"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("maps", total=n_images, info="")
            made = {"maps": 0}

            def show(p) -> None:
                made["maps"] += p.maps
                info = "resumed" if p.skipped else f"{p.seconds / max(1, p.maps):.2f} s/map"
                bar.update(task, completed=p.sessions_done, info=f"{made['maps']} maps, {info}")

            result = generate_maps(out, config, sampler=smp, classifier=clf, dataset=dataset, progress=show)
        console.print(
            f"{out}: {result['chunks']} new chunks ({result['maps']} maps) in {result['seconds']:.0f} s; "
            f"{result['skipped_chunks']} chunks were already there"
        )


def amortized_train(
    maps: list[Path] = typer.Option(
        ...,
        "--maps",
        help="Folder of a map dataset (boed amortized-maps --out); repeat it to train on several "
        "(same checkpoints and settings, e.g. other --seed).",
    ),
    out: Path = typer.Option(
        Path("boed/amortized/weights/phantom-cpu"),
        "--out",
        help="Checkpoint to write (NAME.safetensors + NAME.json).",
    ),
    steps: int = typer.Option(3000, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(5e-3, "--lr", help="Peak learning rate (AdamW, warm-up + cosine)."),
    width: int = typer.Option(32, "--width", help="Channels of the network (a multiple of 4)."),
    rank_weight: float = typer.Option(
        0.0,
        "--rank-weight",
        help="Weight of the listwise ranking term (0: MSE only; see boed.amortized.train).",
    ),
    val_every: int = typer.Option(
        250, "--val-every", help="Validate (and save the resume state) every N steps."
    ),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT.train (the resume pair)."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (0: torch's default)."),
) -> None:
    """Train the amortised policy's value network on an EIG-map dataset (regression + ranking)."""
    with user_errors():
        import torch

        from boed.amortized.train import AmortizedTrainConfig, train_amortized
        from boed.errors import BoedError

        if threads > 0:
            torch.set_num_threads(threads)
        for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--val-every", val_every)):
            if value < 1:
                raise BoedError(f"{name} must be at least 1, got {value}")
        if width < 4 or width % 4:
            raise BoedError(f"--width must be a positive multiple of 4, got {width}")
        if not lr > 0 or rank_weight < 0:
            raise BoedError("--lr must be positive and --rank-weight not negative")
        config = AmortizedTrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            width=width,
            rank_weight=rank_weight,
            val_every=val_every,
            warmup_steps=min(100, max(1, steps // 10)),
            seed=seed,
        )
        result = train_amortized(
            [str(m) for m in maps],
            out,
            config,
            resume=resume,
            log=lambda line: console.print(line, highlight=False),
        )
        m = result.meta["metrics"]
        console.print(
            f"validation: top-1 {m['top1']:.2f}, within 2 se of the exact best {m['within_2se']:.2f}, "
            f"regret {m['regret']:.4f} nats ({m['regret_vs_random']:.2f} of random's)"
        )
        for step, sm in sorted(m["by_step"].items(), key=lambda kv: int(kv[0])):
            console.print(
                f"  decision {step} ({sm['maps']} maps): top-1 {sm['top1']:.2f}, "
                f"within 2 se {sm['within_2se']:.2f}, regret {sm['regret_vs_random']:.2f} of random's",
                highlight=False,
            )


def register(app: typer.Typer) -> None:
    """Add ``amortized-maps`` and ``amortized-train`` to the ``boed`` app."""
    app.command("amortized-maps")(amortized_maps)
    app.command("amortized-train")(amortized_train)
