"""The store's one user-facing error type."""

from __future__ import annotations


class StoreError(ValueError):
    """A database that cannot be opened or reached, an unknown run or session id, or a write that
    does not fit the schema (wrong number of probabilities, a step logged twice, ...).

    The message is one line meant for the user; the CLI prints it without a traceback.
    """
