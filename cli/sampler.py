"""``boed train-sampler`` and ``boed evaluate-sampler``: the AIPO / AIPO-R samplers (generative/)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from cli.common import (
    ALLOW_MODALITY_OPTION,
    ALLOW_SYMLINKS_OPTION,
    ALLOW_TRAINING_IMAGES_OPTION,
    MAX_PIXELS_OPTION,
    SKIP_BAD_OPTION,
    SPLIT_SEED_OPTION,
    console,
    dataset_options,
    fail,
    recorded_split_seed,
    user_errors,
)

AIPO_ONLY = ("--pretrained-vae", "--init-from-encoder", "--objective")


def parse_settings(settings: list[str] | None) -> dict[str, object]:
    """``--set KEY=VALUE`` pairs as a dict; VALUE is read as JSON (numbers, true/false, lists), else text."""
    out: dict[str, object] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set {item!r}: expected KEY=VALUE (a field of the sampler's config)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def training_config(
    family, name: str, preset: str, changes: dict, settings: dict, pretrained: bool, objective
):
    """The config ``name`` trains with: the family's preset, then the options, then ``--set``.

    Options the family's config has no field for are one clear error naming the option.
    """
    import dataclasses

    from boed.config import ConfigError, from_dict, to_dict

    config = family.config(preset)
    if family.model_id == "aipo-hvae":
        config = family.for_name(config, name, pretrained)
        if objective:
            from generative.config import OBJECTIVES

            if objective not in OBJECTIVES:
                raise fail(f"--objective {objective!r}: valid: {', '.join(OBJECTIVES)}")
            changes = changes | {"objective": objective}
    else:
        config = family.for_name(config, name)
    fields = {f.name for f in dataclasses.fields(config)}
    for key, value in changes.items():
        if value is not None and key not in fields:
            raise fail(f"--{key.replace('_', '-')}: sampler {name!r} has no such setting")
    merged = to_dict(config) | {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise fail(
            f"--set {unknown[0]}: not a field of {name!r}'s config; fields: {', '.join(sorted(fields))}"
        )
    try:
        return from_dict(type(config), merged | settings)
    except ConfigError as exc:
        raise fail(f"--set: {exc}") from None


def train_sampler_command(
    sampler: str = typer.Option(
        "aipo", "--sampler", help="Sampler to train (see `boed samplers`); e.g. aipo, aipo-r, vae."
    ),
    images: str = typer.Option("chestxray", "--images", help="Image source (datasets.open_dataset)."),
    preset: str = typer.Option("cpu", "--preset", help="tiny | cpu | paper (where the sampler has it)."),
    out: Path = typer.Option(
        ..., "--out", help="Checkpoint to write (stem or .safetensors); OUT.train.* holds the resume state."
    ),
    settings: list[str] | None = typer.Option(
        None, "--set", help="KEY=VALUE: set a field of the sampler's config (repeatable)."
    ),
    pretrained_vae: Path | None = typer.Option(
        None, "--pretrained-vae", help="AIPO: train only the partial encoder on this VAE (§3.2)."
    ),
    init: Path | None = typer.Option(
        None, "--init", help="Warm start from this sampler checkpoint (same sampler and architecture)."
    ),
    init_from_encoder: bool | None = typer.Option(
        None,
        "--init-from-encoder/--no-init-from-encoder",
        help="AIPO: initialise the partial encoder from the full encoder (default: only for aipo-r).",
    ),
    objective: str | None = typer.Option(
        None, "--objective", help="AIPO override: vae | aipo | aipo-r | vae+aipo | vae+aipo-r."
    ),
    steps: int | None = typer.Option(None, "--steps"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    skip_threshold: float | None = typer.Option(None, "--skip-threshold"),
    grad_clip: float | None = typer.Option(None, "--grad-clip"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT.train.*"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto."),
    n_train: int = typer.Option(20000, "--n-train", help="Training images to load (phantoms: generated)."),
    n_val: int = typer.Option(128, "--n-val", help="Validation images."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="NIH ChestX-ray14 root (else BOED_DATA_ROOT, else phantoms)."
    ),
    val_every: int = typer.Option(250, "--val-every"),
    ckpt_every: int = typer.Option(250, "--ckpt-every"),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    workers: int | None = typer.Option(
        None, "--workers", help="DataLoader workers decoding images (default: spare cores, at most 4)."
    ),
    split_seed: int | None = SPLIT_SEED_OPTION,
    max_pixels: int | None = MAX_PIXELS_OPTION,
    allow_symlinks: bool = ALLOW_SYMLINKS_OPTION,
    allow_modality: list[str] | None = ALLOW_MODALITY_OPTION,
    skip_bad: bool = SKIP_BAD_OPTION,
    quiet: bool = typer.Option(False, "--quiet", help="Log lines instead of a progress bar."),
) -> None:
    """Train any trainable sampler with the shared trainer; works under torchrun."""
    import torch

    from boed.runtime.devices import init_distributed, resolve_device, shutdown_distributed
    from generative.registry import get_family, trainable
    from generative.training import TrainOptions, train_generative

    with user_errors():
        if sampler not in trainable():
            raise fail(f"--sampler {sampler!r}: trainable samplers: {', '.join(trainable())}")
        family = get_family(sampler)
        if family.model_id != "aipo-hvae":
            given = [
                flag
                for flag, value in zip(AIPO_ONLY, (pretrained_vae, init_from_encoder, objective), strict=True)
                if value is not None
            ]
            if given:
                raise fail(f"{given[0]}: an AIPO option; sampler {sampler!r} does not take it")
        config = training_config(
            family,
            sampler,
            preset,
            {
                "steps": steps,
                "batch_size": batch_size,
                "lr": lr,
                "skip_threshold": skip_threshold,
                "grad_clip": grad_clip,
            },
            parse_settings(settings),
            pretrained_vae is not None,
            objective,
        )
        if threads:
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        dist = init_distributed(dev)
        if dev.type == "cuda" and dist.enabled:
            dev = torch.device("cuda", dist.local_rank)
        from datasets import open_dataset

        data_options = dataset_options(
            split_seed=split_seed,
            max_pixels=max_pixels,
            allow_symlinks=allow_symlinks,
            allow_modality=allow_modality,
            skip_bad=skip_bad,
        )
        train_ds = open_dataset(
            images,
            split="train",
            size=config.image_size,
            n=n_train,
            data_root=data_root,
            seed=seed,
            **data_options,
        )
        val_ds = open_dataset(
            images,
            split="val",
            size=config.image_size,
            n=n_val,
            data_root=data_root,
            seed=seed,
            **data_options,
        )
        options = TrainOptions(
            out=out,
            seed=seed,
            device=str(dev),
            resume=resume,
            pretrained_vae=pretrained_vae,
            init_partial_from_encoder=init_from_encoder,
            val_every=val_every,
            ckpt_every=ckpt_every,
            val_images=n_val,
            workers=workers,
            init=init,
            command="boed " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        )
        show = dist.is_main
        log = (lambda msg: console.print(msg, highlight=False)) if show else (lambda msg: None)
        if show:
            what = f"{sampler} ({config.objective})" if family.model_id == "aipo-hvae" else sampler
            log(
                f"training {what} preset {preset}: {len(train_ds)} images, "
                f"{config.steps} steps of {config.batch_size}, lr {getattr(config, 'lr', '-')}, "
                f"device {dev}, world {dist.world_size}"
            )
        callbacks = []
        progress = None
        if show and not quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            task = progress.add_task("train", total=config.steps)

            def show_progress(state, stats):
                keys = _progress_keys(family, stats)
                text = " ".join(f"{k.replace('_bpd', '')} {stats[k]:.3f}" for k in keys if k in stats)
                progress.update(
                    task,
                    completed=state.step,
                    description=f"{text} skipped {state.skipped} {stats['img_per_s']:.0f} img/s",
                )

            callbacks.append(show_progress)
        elif show:

            def log_lines(state, stats):
                if state.step % 50 == 0:
                    keys = (*_progress_keys(family, stats), "grad_norm")
                    text = " ".join(f"{k} {stats[k]:.4f}" for k in keys if k in stats)
                    log(
                        f"step {state.step} {text} skipped {state.skipped} "
                        f"{state.images_seen / max(state.seconds, 1e-9):.1f} img/s {state.seconds:.0f}s"
                    )

            callbacks.append(log_lines)
        try:
            if progress is not None:
                progress.start()
            _, state, metrics = train_generative(
                family, sampler, config, train_ds, val_ds, options, dist=dist, log=log, callbacks=callbacks
            )
        finally:
            if progress is not None:
                progress.stop()
            shutdown_distributed()
        if show:
            log(f"wrote {out} ({state.step} steps, {state.skipped} skipped, {state.seconds:.0f} s)")
            log(json.dumps(metrics, indent=1))


def _progress_keys(family, stats: dict) -> tuple[str, ...]:
    """The family's progress stats present in ``stats`` (a multi-phase family logs ``phase.key``)."""
    return tuple(k for k in family.progress_keys if k in stats)


def evaluate_sampler_command(
    checkpoint: Path | None = typer.Argument(None, help="Sampler checkpoint (default: the shipped cpu one)."),
    images: str = typer.Option("chestxray", "--images"),
    n_images: int = typer.Option(64, "--n-images", help="Held-out test images."),
    n_samples: int = typer.Option(8, "--n-samples", help="Completions per input for diversity/accuracy."),
    seed: int = typer.Option(0, "--seed"),
    data_root: Path | None = typer.Option(None, "--data-root"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    png: Path | None = typer.Option(
        None, "--png", help="Write a Fig. 8-style grid (truth, observation, 5 completions; 0..5 squares)."
    ),
    classifier: Path | None = typer.Option(
        None,
        "--classifier",
        help="Classifier checkpoint for the Any accuracy (its labels must be the data's); "
        "default: the shipped one, skipped (with a note) if its labels differ from the data's.",
    ),
    no_classifier: bool = typer.Option(False, "--no-classifier", help="Skip the Any accuracy."),
    sampler_name: str = typer.Option(
        "aipo",
        "--sampler",
        help="Sampler name (`boed samplers`; must fit the checkpoint's kind). The ELBO and Eq. 10 bound "
        "columns need an AIPO checkpoint; other samplers get diversity and accuracy.",
    ),
    allow_training_images: bool = ALLOW_TRAINING_IMAGES_OPTION,
    split_seed: int | None = typer.Option(
        None,
        "--split-seed",
        help="Split seed of file sources (default: the one the sampler was trained with).",
    ),
    max_pixels: int | None = MAX_PIXELS_OPTION,
    allow_symlinks: bool = ALLOW_SYMLINKS_OPTION,
    allow_modality: list[str] | None = ALLOW_MODALITY_OPTION,
    skip_bad: bool = SKIP_BAD_OPTION,
    threads: int | None = typer.Option(None, "--threads"),
) -> None:
    """Evaluate a sampler on held-out images: ELBO, the Eq. 10 bound vs squares, diversity, accuracy."""
    import torch

    from generative.evaluation import evaluate, figure_8
    from generative.registry import build_sampler

    with user_errors():
        if classifier is not None and no_classifier:
            raise fail("--classifier and --no-classifier exclude each other")
        if threads:
            torch.set_num_threads(threads)
        sampler = build_sampler(sampler_name, checkpoint)
        from datasets import open_dataset

        if split_seed is None:
            split_seed = recorded_split_seed(sampler.meta)
        options = dataset_options(
            split_seed=split_seed,
            max_pixels=max_pixels,
            allow_symlinks=allow_symlinks,
            allow_modality=allow_modality,
            skip_bad=skip_bad,
        )
        ds = open_dataset(
            images,
            split="test",
            size=sampler.image_size,
            n=n_images,
            data_root=data_root,
            seed=seed,
            **options,
        )
        notes = _check_training_overlap(sampler, ds.describe(), checkpoint, allow_training_images)
        if no_classifier:
            any_fn, reason, used = None, "--no-classifier", None
        else:
            any_fn, reason, used = _classifier_any(classifier, tuple(ds.labels), sampler.image_size)
        x, y = ds.tensors()
        result = evaluate(
            sampler, x, y, n_samples=n_samples, seed=seed, any_accuracy=any_fn, skip_reason=reason
        )
        result["notes"] = notes + result["notes"]
        result["classifier"] = used
        if png is not None:
            figure_8(sampler, x[:2], png, seed=seed)
            result["png"] = str(png)
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            _print_table(result)


def _check_training_overlap(sampler, description: dict, checkpoint: Path | None, allow: bool) -> list[str]:
    """Refuse (SamplerError) data the sampler checkpoint was trained on, unless ``allow``; notes."""
    from datasets.errors import DatasetError
    from datasets.provenance import check_training_data
    from generative.errors import SamplerError

    where = str(checkpoint) if checkpoint is not None else "the shipped sampler checkpoint"
    try:
        return check_training_data(sampler.meta.get("data"), description, what=where, allow_overlap=allow)
    except DatasetError as exc:
        raise SamplerError(str(exc)) from None


def _classifier_any(path: Path | None, data_labels: tuple[str, ...], image_size: int):
    """``(fn, None, info)`` with ``fn(images (B,1,H,W), labels (B,L)) -> Any accuracy`` and ``info`` =
    ``{"checkpoint", "sha256"}`` of the classifier used, or ``(None, reason, None)``.

    ``path`` given: that classifier, whose labels must equal ``data_labels`` (else ClassifierError:
    the user asked for it). ``path`` None: the shipped classifier of the image size's preset, or
    ``None`` and the reason when there is none or it does not fit the data (other labels or image
    size, no ``Any`` label).
    """
    try:
        from classifiers import load_classifier
        from classifiers.errors import ClassifierError
    except ImportError as exc:
        return None, f"the classifiers package is not available ({exc})", None
    if path is not None:
        clf = load_classifier(path, labels=data_labels)
        if clf.image_size != image_size:
            raise ClassifierError(
                f"{path}: classifies {clf.image_size}x{clf.image_size} images, the sampler completes "
                f"{image_size}x{image_size}"
            )
    else:
        preset = {64: "cpu", 256: "paper", 32: "tiny"}.get(image_size, "cpu")
        try:
            clf = load_classifier(preset=preset)
        except ClassifierError as exc:
            return None, f"no usable shipped classifier ({exc})", None
        if tuple(clf.labels) != tuple(data_labels):
            return (
                None,
                f"the shipped classifier's labels ({len(clf.labels)}: {', '.join(clf.labels)}) differ "
                f"from the data's ({len(data_labels)}: {', '.join(data_labels)}); pass --classifier CKPT "
                "trained on these labels",
                None,
            )
        if clf.image_size != image_size:
            return (
                None,
                f"the shipped {preset} classifier classifies {clf.image_size}x{clf.image_size} images, "
                f"the sampler completes {image_size}x{image_size}",
                None,
            )
    if "Any" not in clf.labels:
        return None, f"the classifier has no 'Any' label (labels: {', '.join(clf.labels)})", None
    import torch

    from classifiers.metrics import accuracy as accuracy_score

    any_index = list(clf.labels).index("Any")

    def accuracy(images, labels):
        full = torch.ones_like(images)
        probs = torch.cat(
            [clf.predict(images[i : i + 256], full[i : i + 256]) for i in range(0, len(images), 256)]
        )
        return accuracy_score(probs[:, any_index].numpy(), labels[:, any_index].numpy())

    info = {"checkpoint": str(path) if path is not None else "shipped", "sha256": clf.sha256}
    return accuracy, None, info


def _print_table(result: dict) -> None:
    from rich.table import Table

    console.print(f"sampler {result['sampler']} ({result['sha256'][:12]}), {result['n_images']} test images")
    console.print(f"unconditional ELBO: {result['elbo_bpd']:.4f} bits/dim")
    table = Table(
        "squares",
        "observed %",
        "Eq. 10 bound (bits/dim)",
        "diversity (L1)",
        "diversity (L2)",
        "Any acc. completions",
        "Any acc. truth",
    )
    for row in result["by_squares"]:
        acc = row.get("any_accuracy_completions")
        table.add_row(
            str(row["squares"]),
            f"{100 * row['observed_frac']:.1f}",
            f"{row['cond_bpd']:.4f}",
            f"{row['diversity_l1']:.4f}",
            f"{row['diversity_l2']:.4f}",
            "-" if acc is None else f"{acc:.3f}",
            "-" if result.get("any_accuracy_truth") is None else f"{result['any_accuracy_truth']:.3f}",
        )
    console.print(table)
    for note in result.get("notes", []):
        console.print(f"note: {note}")


def samplers_command() -> None:
    """List the registered samplers: whether each trains, whether its n completions differ (one = a
    deterministic point estimate), whether a cpu checkpoint ships."""
    from rich.table import Table

    from boed.runtime.checkpoints import checkpoint_paths
    from generative.registry import SPECS, WEIGHTS

    table = Table(show_lines=False)
    table.add_column("sampler", no_wrap=True)
    table.add_column("trains", overflow="fold")
    table.add_column("draws", overflow="fold")
    table.add_column("ships", overflow="fold")
    table.add_column("what it is", overflow="fold", ratio=1)
    for name, spec in SPECS.items():
        shipped = spec.shipped and checkpoint_paths(WEIGHTS / f"{spec.shipped}-cpu")[1].is_file()
        table.add_row(
            name,
            "yes" if spec.family else ("index" if spec.artifact else "no"),
            "one" if spec.deterministic else "n",
            "yes" if shipped else "-",
            spec.summary,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``boed`` app."""
    app.command("samplers")(samplers_command)
    app.command("train-sampler")(train_sampler_command)
    app.command("evaluate-sampler")(evaluate_sampler_command)
