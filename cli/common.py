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
# keyword arguments of ``datasets.open_dataset`` (validated), the check of a checkpoint's
# training data against the data a command is about to use is datasets.provenance.check_training_data.
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
SKIP_BAD_OPTION = typer.Option(
    False, "--skip-bad", help="Log and skip bad files and label rows (counted once) instead of stopping."
)
ALLOW_TRAINING_IMAGES_OPTION = typer.Option(
    False,
    "--allow-training-images",
    help="Go on (with a warning) even on images a checkpoint was trained on.",
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
    skip_bad: bool = False,
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
    if skip_bad:
        out["skip_bad"] = True
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


def recorded_split_seed(*metas: dict | None) -> int | None:
    """The split seed recorded with the first checkpoint whose training data has one, else None.

    A checkpoint's ``meta["data"]["train"]["split_seed"]``: evaluating or simulating with the
    split seed a model was trained with keeps its training images out of the test split.
    """
    for meta in metas:
        data = meta.get("data") if isinstance(meta, dict) else None
        trained = data.get("train") if isinstance(data, dict) else None
        seed = trained.get("split_seed") if isinstance(trained, dict) else None
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None
