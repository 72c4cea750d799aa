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
