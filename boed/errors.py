"""Errors of the controller."""

from __future__ import annotations


class BoedError(ValueError):
    """Bad input to the controller: an unknown policy, target or label, or parts that do not fit.

    The message names what was wrong and lists the valid choices; the CLI shows it as one line.
    """
