"""Errors of the generative package."""

from __future__ import annotations


class SamplerError(ValueError):
    """A bad sampler name, checkpoint, config or input (shapes, mask values); the message says which."""
