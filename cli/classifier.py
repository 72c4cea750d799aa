"""``boed train-classifier`` and ``boed evaluate-classifier``: the AVP-CNN g (classifiers/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.common import console, user_errors


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
    workers: int | None = typer.Option(
        None, "--workers", help="DataLoader workers decoding images (default: spare cores, at most 4)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train the classifier g on partial observations (runs under torchrun for DDP)."""
    with user_errors():
        from classifiers.train import train_classifier

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
            train_overrides=overrides,
            workers=workers,
            progress=not quiet,
            log=lambda msg: console.print(msg, highlight=False),
        )
        if result is not None:
            ev = result.meta["metrics"]["val_evaluation"]
            console.print(evaluation_table(ev, title=f"validation ({ev['n_images']} images)"))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}".removeprefix("0")


def evaluation_table(result: dict[str, Any], title: str = "evaluation"):
    """A rich table: rows = labels (AUROC), Any accuracy, ECE; columns = 0..5 squares and full."""
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD,
        title=title,
        caption="AUROC per label (pos: known positives); columns: observed squares (25% side)",
        padding=(0, 1),
    )
    table.add_column("AUROC / metric", no_wrap=True, overflow="ellipsis", min_width=12)
    for cond in result["conditions"]:
        table.add_column(cond["name"].replace(" squares", " sq"), justify="right", no_wrap=True)
    table.add_column("pos", justify="right", style="dim", no_wrap=True)
    for i, label in enumerate(result["labels"]):
        table.add_row(
            label,
            *(_fmt(c["auroc"][label]) for c in result["conditions"]),
            str(result["positives"][label]),
            end_section=i == len(result["labels"]) - 1,
        )
    table.add_row("accuracy Any", *(_fmt(c["accuracy_any"]) for c in result["conditions"]), "", style="bold")
    table.add_row("ECE Any", *(_fmt(c["ece_any"]) for c in result["conditions"]), "")
    table.add_row("ECE all", *(_fmt(c["ece_all"]) for c in result["conditions"]), "")
    table.add_row("BCE loss", *(_fmt(c["loss"]) for c in result["conditions"]), "")
    return table


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
    preset: str = typer.Option("cpu", "--preset", help="Preset of the shipped checkpoint (with 'shipped')."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """AUROC per finding and Any, accuracy of Any, at 0-5 observed squares (25% side) and full image."""
    with user_errors():
        from classifiers.evaluate import evaluate_dataset
        from classifiers.partial import load_classifier

        clf = load_classifier(None if checkpoint == "shipped" else checkpoint, preset=preset, device=device)
        from datasets import open_dataset

        ds = open_dataset(
            images, split=split, size=clf.image_size, n=n or None, data_root=data_root, seed=seed
        )
        result = evaluate_dataset(clf, ds, seed=seed)
        result["checkpoint"] = {"name": clf.name, "sha256": clf.sha256, "temperature": clf.temperature}
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        console.print(
            evaluation_table(result, title=f"{clf.name} on {images}/{split} ({result['n_images']} images)")
        )
        if result["undefined"]:
            console.print(
                f"n/a: no positive or no negative example in the data for {', '.join(result['undefined'])}",
                style="dim",
                highlight=False,
            )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``boed`` app."""
    app.command("train-classifier")(train_classifier_cmd)
    app.command("evaluate-classifier")(evaluate_classifier_cmd)
