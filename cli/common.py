"""Shared CLI plumbing: clean one-line errors for user mistakes, console, progress bars.

Heavy libraries (torch, monai, matplotlib) are imported inside commands, never here, so that
``boed --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user gave bad input": shown as one line, not a traceback."""
    from boed.config import ConfigError
    from boed.runtime.checkpoints import CheckpointError
    from datasets.labels import LabelError

    types: list[type[BaseException]] = [ConfigError, CheckpointError, LabelError, FileNotFoundError]
    for module, name in (
        ("datasets.errors", "DatasetError"),
        ("boed.errors", "BoedError"),
        ("classifiers.errors", "ClassifierError"),
        ("generative.errors", "SamplerError"),
        ("boed.store.errors", "StoreError"),
    ):
        try:
            mod = __import__(module, fromlist=[name])
            types.append(getattr(mod, name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` to stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's user-error exceptions into one clear line and exit code 2.

    Set ``BOED_DEBUG=1`` to see the full traceback instead.
    """
    try:
        yield
    except _user_error_types() as exc:
        if os.environ.get("BOED_DEBUG"):
            raise
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted", style="yellow")
        sys.exit(130)


# -- dataset options shared by every command that opens a dataset ------------------------------------
# Typer options to put in a command's signature; :func:`dataset_options` turns their values into
# keyword arguments of ``datasets.open_dataset`` (validated), :func:`check_training_data` compares a
# checkpoint's training data with the data a command is about to use.
SPLIT_SEED_OPTION = typer.Option(
    None,
    "--split-seed",
    help="Seed of the train/val/test split of file sources (default 0, a constant); never the run's "
    "--seed. Phantoms have none (each seed and split is its own generator stream).",
)
MAX_PIXELS_OPTION = typer.Option(
    None,
    "--max-pixels",
    help="Largest declared image size decoded, in pixels (default 8192 x 8192 = 67,108,864); larger "
    "files are refused from their header (decompression bombs).",
)
ALLOW_SYMLINKS_OPTION = typer.Option(
    False, "--allow-symlinks", help="Follow symbolic links that point out of the data root."
)
ALLOW_MODALITY_OPTION = typer.Option(
    None,
    "--allow-modality",
    help="DICOM modality to read besides CR and DX (with a warning), e.g. MG; repeat or comma-separate.",
)


def dataset_options(
    *,
    split_seed: int | None = None,
    max_pixels: int | None = None,
    allow_symlinks: bool = False,
    allow_modality: list[str] | tuple[str, ...] | str | None = None,
) -> dict:
    """Keyword arguments for ``datasets.open_dataset`` from the values of the options above.

    Options left at ``None`` are left out (the library defaults apply). Raises
    ``typer.BadParameter`` (a one-line usage error naming the option) for a negative split seed,
    a cap below 1 pixel or a modality that is not a DICOM code (letters and digits).
    """
    import re

    out: dict = {}
    if split_seed is not None:
        if int(split_seed) < 0:
            raise typer.BadParameter(f"must be >= 0, got {split_seed}", param_hint="--split-seed")
        out["split_seed"] = int(split_seed)
    if max_pixels is not None:
        if int(max_pixels) < 1:
            raise typer.BadParameter(f"must be >= 1, got {max_pixels}", param_hint="--max-pixels")
        out["max_pixels"] = int(max_pixels)
    if allow_symlinks:
        out["allow_symlinks"] = True
    if allow_modality:
        items = [allow_modality] if isinstance(allow_modality, str) else list(allow_modality)
        codes = [c.strip().upper() for item in items for c in str(item).split(",") if c.strip()]
        for code in codes:
            if not re.fullmatch(r"[A-Z0-9]{1,16}", code):
                raise typer.BadParameter(
                    f"{code!r} is not a DICOM modality code (letters and digits, e.g. MG)",
                    param_hint="--allow-modality",
                )
        out["allow_modalities"] = tuple(dict.fromkeys(codes))
    return out


def check_training_data(
    trained_on: dict | None, data: dict, *, allow_overlap: bool = False, what: str = "checkpoint"
) -> list[str]:
    """Refuse data a checkpoint was trained on; warn when it is another source or collection.

    ``trained_on`` is the checkpoint's ``meta["data"]`` (``{"train": describe(), "val": ...}``),
    ``data`` the ``describe()`` of the dataset about to be used. Raises ``DatasetError`` (one line)
    on an overlap unless ``allow_overlap`` (then it is a warning); prints each warning to stderr
    and returns them.
    """
    from datasets.errors import DatasetError
    from datasets.provenance import source_mismatch, training_overlap

    warnings: list[str] = []
    overlap = training_overlap(trained_on, data)
    if overlap is not None:
        if not allow_overlap:
            raise DatasetError(f"{what}: {overlap}; use another split or pass --allow-trained-images")
        warnings.append(f"{what}: {overlap} (allowed by --allow-trained-images)")
    mismatch = source_mismatch(trained_on, data)
    if mismatch is not None:
        warnings.append(f"{what}: {mismatch}")
    for text in warnings:
        err_console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)
    return warnings
