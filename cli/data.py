"""``boed data export-phantoms|preview``: write the phantoms as a dataset, look at any dataset.

Thin: each command builds a dataset with ``datasets.open_dataset`` (imported inside the command so
that ``boed --help`` stays fast), calls the library and prints what it did.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from cli.common import (
    ALLOW_MODALITY_OPTION,
    ALLOW_SYMLINKS_OPTION,
    MAX_PIXELS_OPTION,
    SPLIT_SEED_OPTION,
    console,
    dataset_options,
    err_console,
    user_errors,
)

data_app = typer.Typer(
    help="Datasets: export the built-in phantoms, preview any image source.", no_args_is_help=True
)


class ImageSource(StrEnum):
    chestxray = "chestxray"
    phantoms = "phantoms"
    phantoms_v1 = "phantoms-v1"
    phantoms_v2 = "phantoms-v2"
    nih = "nih"
    dicom = "dicom"
    folder = "folder"


class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


class ExportFormat(StrEnum):
    png = "png"
    dicom = "dicom"


IMAGES = typer.Option(
    ImageSource.chestxray,
    "--images",
    help="Image source: chestxray (ChestX-ray14 with --data-root or $BOED_DATA_ROOT, else phantoms), "
    "phantoms (= phantoms-v2, graded difficulty), phantoms-v1 (the original, easy), nih, dicom, folder.",
)
DATA_ROOT = typer.Option(None, "--data-root", help="Folder of a file-based source [env: BOED_DATA_ROOT].")
SIZE = typer.Option(64, "--size", min=16, help="Image side in pixels.")
SEED = typer.Option(0, "--seed", help="Phantom seed; the n-image subset of a file split (not the split).")
SKIP_BAD = typer.Option(
    False, "--skip-bad", help="Log and skip bad files and label rows instead of stopping."
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``boed`` app."""
    app.add_typer(data_app, name="data")


def _report_skipped(ds) -> None:
    skipped = getattr(ds, "skipped", [])
    if skipped:
        err_console.print(f"[yellow]skipped {len(skipped)} bad input(s):[/]", highlight=False)
        for path, reason in skipped[:20]:
            err_console.print(f"  {path}: {reason}", highlight=False, soft_wrap=True)
        if len(skipped) > 20:
            err_console.print(f"  ... and {len(skipped) - 20} more", highlight=False)


@data_app.command("export-phantoms")
def export_phantoms(
    out: Path = typer.Option(..., "--out", help="Output folder (created)."),
    n: int = typer.Option(100, "--n", min=1, help="Number of images."),
    size: int = SIZE,
    fmt: ExportFormat = typer.Option(ExportFormat.png, "--format", help="png (NIH style) or dicom."),
    split: Split = typer.Option(Split.train, "--split", help="Which phantom split to export."),
    seed: int = SEED,
    prevalence: float = typer.Option(0.5, "--prevalence", min=0.0, max=1.0, help="Fraction with findings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in OUT."),
) -> None:
    """Write phantoms as NIH-style files (NNNNNNNN_000.png|.dcm) plus Data_Entry and BBox CSVs."""
    from rich.progress import Progress

    from datasets.export import export_phantoms as export

    with user_errors():
        if split == Split.all:
            raise typer.BadParameter("phantoms have train, val and test splits", param_hint="--split")
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"writing {n} phantoms", total=n)
            paths = export(
                out,
                n=n,
                size=size,
                fmt=fmt.value,
                seed=seed,
                split=split.value,
                prevalence=prevalence,
                overwrite=overwrite,
                progress=lambda k: progress.advance(task, k),
            )
    console.print(
        f"wrote {len(paths)} {fmt.value} images of {size}x{size} to {out / 'images'}, "
        f"labels {out / 'Data_Entry_2017_v2020.csv'}, boxes {out / 'BBox_List_2017.csv'}",
        highlight=False,
        soft_wrap=True,
    )
    reader = "nih" if fmt == ExportFormat.png else "dicom"
    console.print(f"read back with: --images {reader} --data-root {out}", highlight=False, soft_wrap=True)


@data_app.command("preview")
def preview(
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    images: ImageSource = IMAGES,
    data_root: str = DATA_ROOT,
    split: Split = typer.Option(Split.train, "--split", help="Split to preview."),
    n: int = typer.Option(16, "--n", min=1, max=400, help="Number of images in the grid."),
    cols: int = typer.Option(None, "--cols", min=1, help="Grid columns [default: about square]."),
    size: int = SIZE,
    seed: int = SEED,
    skip_bad: bool = SKIP_BAD,
    split_seed: int = SPLIT_SEED_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    allow_symlinks: bool = ALLOW_SYMLINKS_OPTION,
    allow_modality: list[str] = ALLOW_MODALITY_OPTION,
) -> None:
    """Write a grid of images with their labels (and finding outlines for phantoms)."""
    from datasets import open_dataset
    from datasets.preview import write_preview

    with user_errors():
        options = dataset_options(
            split_seed=split_seed,
            max_pixels=max_pixels,
            allow_symlinks=allow_symlinks,
            allow_modality=allow_modality,
        )
        ds = open_dataset(
            images.value,
            split=split.value,
            size=size,
            data_root=data_root,
            seed=seed,
            skip_bad=skip_bad,
            **options,
        )
        if len(ds) == 0:
            raise typer.BadParameter(f"no images in split {split.value}", param_hint="--split")
        path = write_preview(ds, out, n=n, cols=cols)
        _report_skipped(ds)
    d = ds.describe()
    console.print(
        f"wrote {path}: {min(n, len(ds))} of {len(ds)} {d['source']} images ({split.value}, {size} px)",
        highlight=False,
        soft_wrap=True,
    )
