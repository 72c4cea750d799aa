"""The store's one user-facing error type."""

from __future__ import annotations


class StoreError(ValueError):
    """A database that cannot be opened or reached, an unknown run or session id, or a write that
    does not fit the schema (wrong number of probabilities, a step logged twice, ...).

    The message is one line meant for the user; the CLI prints it without a traceback.
    """


class StoreWriteError(StoreError):
    """The database failed a write it should have taken: disk full, a read-only file, a lock held
    past the busy timeout, a lost connection, a constraint broken by another process.

    Every write is one transaction, so nothing committed before is lost. A simulation stops at
    once on this error (the store, not the image, is at fault); ``--resume`` continues it.
    """
