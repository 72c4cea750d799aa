"""Errors of the classifier package."""

from __future__ import annotations


class ClassifierError(ValueError):
    """Bad input to a classifier (wrong image size, channels, label set) or an unusable checkpoint."""
