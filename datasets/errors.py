"""The one error type of the datasets package."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """Bad input data: the message names the file (when there is one) and the reason."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)
