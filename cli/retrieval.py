"""``boed build-retrieval-index``: the database of training images of the ``retrieval`` sampler."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from cli.common import (
    ALLOW_MODALITY_OPTION,
    ALLOW_SYMLINKS_OPTION,
    MAX_PIXELS_OPTION,
    SKIP_BAD_OPTION,
    SPLIT_SEED_OPTION,
    console,
    dataset_options,
    fail,
    user_errors,
)


def build_retrieval_index_command(
    out: Path = typer.Option(
        ..., "--out", help="Index to write (stem or .safetensors; a JSON sidecar beside it)."
    ),
    images: str = typer.Option("chestxray", "--images", help="Image source (datasets.open_dataset)."),
    preset: str = typer.Option("cpu", "--preset", help="tiny | cpu | paper: the image size."),
    n_train: int = typer.Option(
        5000, "--n-train", help="Training images in the database (phantoms: generated)."
    ),
    pca: int | None = typer.Option(
        None, "--pca", help="Keep a K-component PCA of the images for the proposal (default: none)."
    ),
    noise_std: float = typer.Option(
        0.1, "--noise-std", help="Std of the Gaussian pixel noise of the likelihood (the sampler's default)."
    ),
    shift: int = typer.Option(0, "--shift", help="Marginalise over shifts of up to this many px (e.g. 2)."),
    seed: int = typer.Option(0, "--seed", help="Phantom seed and the PCA's randomised SVD seed."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="NIH ChestX-ray14 root (else BOED_DATA_ROOT, else phantoms)."
    ),
    split_seed: int | None = SPLIT_SEED_OPTION,
    max_pixels: int | None = MAX_PIXELS_OPTION,
    allow_symlinks: bool = ALLOW_SYMLINKS_OPTION,
    allow_modality: list[str] | None = ALLOW_MODALITY_OPTION,
    skip_bad: bool = SKIP_BAD_OPTION,
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
) -> None:
    """Build the retrieval sampler's index from training images (once; pass it as --sampler-checkpoint)."""
    with user_errors():
        if n_train < 1:
            raise fail(f"--n-train must be >= 1, got {n_train}")
        if not noise_std > 0:
            raise fail(f"--noise-std must be > 0, got {noise_std}")
        if shift < 0:
            raise fail(f"--shift must be >= 0, got {shift}")
        if pca is not None and pca < 1:
            raise fail(f"--pca must be >= 1, got {pca}")
        import torch

        from boed.config import get_preset
        from boed.runtime.provenance import describe, trained_on
        from datasets import open_dataset
        from generative.retrieval import build_index

        if threads:
            torch.set_num_threads(threads)
        size = get_preset(preset).image_size
        options = dataset_options(
            split_seed=split_seed,
            max_pixels=max_pixels,
            allow_symlinks=allow_symlinks,
            allow_modality=allow_modality,
            skip_bad=skip_bad,
        )
        ds = open_dataset(
            images, split="train", size=size, n=n_train, data_root=data_root, seed=seed, **options
        )
        t0 = time.perf_counter()
        tensors, _ = ds.tensors()
        if pca is not None and pca > min(len(tensors), size * size):
            raise fail(f"--pca {pca}: at most min(images, pixels) = {min(len(tensors), size * size)}")
        path = build_index(
            tensors,
            out,
            pca=pca,
            noise_std=noise_std,
            shift=shift,
            seed=seed,
            data={"train": describe(ds)},
            trained_on=trained_on(ds, size),
            command="boed " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        )
        console.print(
            f"wrote {path} ({len(tensors)} images of {size}x{size}, pca {pca or 'none'}, noise std "
            f"{noise_std}, shift {shift}; {time.perf_counter() - t0:.1f} s)",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``boed`` app."""
    app.command("build-retrieval-index")(build_retrieval_index_command)
