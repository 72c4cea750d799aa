"""``boed train-classifier`` and ``boed evaluate-classifier``: the AVP-CNN g (classifiers/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    recorded_split_seed,
    user_errors,
)


def train_classifier_cmd(
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (CKPT.safetensors + CKPT.json)."),
    images: str = typer.Option(
        "chestxray",
        "--images",
        help="chestxray (NIH with a data root, else phantoms), phantoms, nih, dicom, folder.",
    ),
    data_root: str | None = typer.Option(
        None, "--data-root", envvar="BOED_DATA_ROOT", help="Dataset folder."
    ),
    preset: str = typer.Option(
        "cpu", "--preset", help="cpu (small DenseNet, 64 px), paper (DenseNet-121, 256 px), tiny (tests)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser updates (preset default)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per update and process."),
    lr: float | None = typer.Option(None, "--lr", help="Peak AdamW learning rate."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of everything random in the run."),
    ema: float | None = typer.Option(None, "--ema", help="EMA decay of the weights (0 = off)."),
    n_train: int | None = typer.Option(None, "--n-train", help="Training images (0 = all)."),
    n_val: int | None = typer.Option(None, "--n-val", help="Validation images."),
    val_every: int | None = typer.Option(None, "--val-every", help="Validate every this many steps."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (torch.set_num_threads)."),
    imagenet_weights: Path | None = typer.Option(
        None,
        "--imagenet-weights",
        help="Local ImageNet DenseNet-121 weights (.safetensors or torch file) to start from.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved in CKPT.train.*."),
    init: Path | None = typer.Option(
        None, "--init", help="Warm start from this classifier checkpoint (same preset and labels)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="DataLoader workers decoding images (default: spare cores, at most 4)."
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Comma-separated label columns to learn, e.g. big,small (default: all of the training data's).",
    ),
    split_seed: int | None = SPLIT_SEED_OPTION,
    max_pixels: int | None = MAX_PIXELS_OPTION,
    allow_symlinks: bool = ALLOW_SYMLINKS_OPTION,
    allow_modality: list[str] | None = ALLOW_MODALITY_OPTION,
    skip_bad: bool = SKIP_BAD_OPTION,
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train the classifier g on partial observations (runs under torchrun for DDP)."""
    with user_errors():
        from classifiers.train import train_classifier

        data_options = dataset_options(
            split_seed=split_seed,
            max_pixels=max_pixels,
            allow_symlinks=allow_symlinks,
            allow_modality=allow_modality,
            skip_bad=skip_bad,
        )

        overrides = {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "ema": ema,
            "n_train": n_train,
            "n_val": n_val,
            "val_every": val_every,
            "num_threads": threads,
        }
        result = train_classifier(
            out,
            preset=preset,
            images=images,
            data_root=data_root,
            device=device,
            resume=resume,
            imagenet_weights=imagenet_weights,
            init=init,
            train_overrides=overrides,
            workers=workers,
            labels=parse_labels(labels),
            data_options=data_options or None,
            progress=not quiet,
            log=lambda msg: console.print(msg, highlight=False),
        )
        if result is not None:
            ev = result.meta["metrics"]["val_evaluation"]
            console.print(evaluation_table(ev, title=f"validation ({ev['n_images']} images)"))


def parse_labels(text: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``None`` -> ``None`` (all of the data's labels)."""
    if text is None:
        return None
    names = [x.strip() for x in text.split(",")]
    if not any(names) or not all(names):
        from classifiers.errors import ClassifierError

        raise ClassifierError(f"--labels: expected comma-separated label names, got {text!r}")
    return names


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}".removeprefix("0")


SECTIONS = (("auroc", "AUROC"), ("accuracy", "accuracy"), ("ece", "ECE"))


def evaluation_table(result: dict[str, Any], title: str = "evaluation"):
    """A rich table: AUROC, accuracy and ECE of every evaluated label, then pooled ECE and BCE.

    Rows name the label they report; columns are 0..5 observed squares and the full image. Every
    cell may wrap (``overflow="fold"``), so nothing is cut off on a narrow console.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    conditions = result["conditions"]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=title,
        caption=(
            f"columns: observed squares ({result.get('side_frac', 0.25):.0%} side); accuracy: p >= "
            f"{result.get('threshold', 0.5)} is positive; ECE: {result.get('ece_bins', 15)} bins; "
            "pos/neg: known labels"
        ),
        padding=(0, 0),
        pad_edge=False,
    )
    table.add_column("label", overflow="fold", min_width=6)
    for cond in conditions:
        table.add_column(cond["name"].replace(" squares", " sq"), justify="right", overflow="fold")
    table.add_column("pos", justify="right", style="dim", overflow="fold")
    table.add_column("neg", justify="right", style="dim", overflow="fold")
    blank = [""] * (len(conditions) + 2)
    for key, heading in SECTIONS:
        table.add_row(Text(heading, style="bold"), *blank)
        for i, label in enumerate(result["labels"]):
            table.add_row(
                label,
                *(_fmt(c[key][label]) for c in conditions),
                str(result["positives"][label]),
                str(result["negatives"][label]),
                end_section=i == len(result["labels"]) - 1,
            )
    table.add_row("ECE pooled", *(_fmt(c["ece_all"]) for c in conditions), "", "")
    table.add_row("BCE loss", *(_fmt(c["loss"]) for c in conditions), "", "")
    return table


def evaluation_notes(result: dict[str, Any]) -> list[str]:
    """Lines printed under the table: labels left out, undefined AUROCs, overlap allowed."""
    notes = []
    left = result.get("left_out", {})
    if left.get("data_only"):
        notes.append(f"left out (the classifier has no output for them): {', '.join(left['data_only'])}")
    if left.get("classifier_only"):
        notes.append(f"left out (not in the data): {', '.join(left['classifier_only'])}")
    if result.get("undefined"):
        undefined = ", ".join(result["undefined"])
        notes.append(f"n/a: no positive or no negative example in the data for {undefined}")
    if result.get("training_overlap"):
        notes.append(f"warning: {result['training_overlap']} (allowed by --allow-training-images)")
    return notes


def evaluate_classifier_cmd(
    checkpoint: str = typer.Argument(
        ..., help="Classifier checkpoint (either file or the stem), or 'shipped'."
    ),
    images: str = typer.Option("chestxray", "--images", help="Image source (as for train-classifier)."),
    data_root: str | None = typer.Option(
        None, "--data-root", envvar="BOED_DATA_ROOT", help="Dataset folder."
    ),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    n: int | None = typer.Option(1000, "--n", help="Number of images (0 = all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the evaluation masks (and of phantoms)."),
    split_seed: int | None = typer.Option(
        None,
        "--split-seed",
        help="Split seed of file sources (default: the one the classifier was trained with).",
    ),
    max_pixels: int | None = MAX_PIXELS_OPTION,
    allow_symlinks: bool = ALLOW_SYMLINKS_OPTION,
    allow_modality: list[str] | None = ALLOW_MODALITY_OPTION,
    skip_bad: bool = SKIP_BAD_OPTION,
    label: list[str] | None = typer.Option(
        None, "--label", help="Report only this label (repeatable; default: all labels shared with the data)."
    ),
    allow_training_images: bool = ALLOW_TRAINING_IMAGES_OPTION,
    preset: str = typer.Option("cpu", "--preset", help="Preset of the shipped checkpoint (with 'shipped')."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """AUROC, accuracy and ECE per label at 0-5 observed squares (25% side) and on the full image."""
    with user_errors():
        from classifiers.evaluate import evaluate_dataset
        from classifiers.partial import load_classifier

        clf = load_classifier(None if checkpoint == "shipped" else checkpoint, preset=preset, device=device)
        from datasets import DEFAULT_SPLIT_SEED, open_dataset

        if split_seed is None:
            split_seed = recorded_split_seed(clf.meta)
        options = dataset_options(
            split_seed=DEFAULT_SPLIT_SEED if split_seed is None else split_seed,
            max_pixels=max_pixels,
            allow_symlinks=allow_symlinks,
            allow_modality=allow_modality,
            skip_bad=skip_bad,
        )
        ds = open_dataset(
            images, split=split, size=clf.image_size, n=n or None, data_root=data_root, seed=seed, **options
        )
        result = evaluate_dataset(
            clf, ds, only=label or None, allow_training_images=allow_training_images, seed=seed
        )
        result["checkpoint"] = {"name": clf.name, "sha256": clf.sha256, "temperature": clf.temperature}
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        console.print(
            evaluation_table(result, title=f"{clf.name} on {images}/{split} ({result['n_images']} images)")
        )
        for note in evaluation_notes(result):
            console.print(note, style="dim", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``boed`` app."""
    app.command("train-classifier")(train_classifier_cmd)
    app.command("evaluate-classifier")(evaluate_classifier_cmd)
