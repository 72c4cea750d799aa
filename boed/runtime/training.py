"""A small generic training loop that knows nothing about the model.

The model side is a ``loss_fn(batch) -> stats`` returning a dict with a scalar tensor ``"loss"``
(and any other scalars to log). The loop clips gradients, skips updates whose loss or gradient
norm is non-finite or above ``skip_threshold`` (the VD-VAE recipe, Child 2020), keeps an optional
EMA of the weights, and calls callbacks after every step. A run of ``max_consecutive_skips``
skipped updates in a row raises instead of silently training nothing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. every update is being skipped)."""


@dataclass
class TrainState:
    """Mutable progress of a run; saved in checkpoints so ``--resume`` continues it."""

    step: int = 0
    skipped: int = 0
    consecutive_skips: int = 0
    images_seen: int = 0
    seconds: float = 0.0
    last: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "skipped": self.skipped,
            "images_seen": self.images_seen,
            "seconds": round(self.seconds, 3),
        }


class EMA:
    """Exponential moving average of a module's parameters and buffers (a frozen copy)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


Callback = Callable[[TrainState, dict[str, float]], None]


def train(
    loss_fn: Callable[[Any], dict[str, torch.Tensor]],
    params: Iterable[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Any],
    steps: int,
    *,
    state: TrainState | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
    skip_threshold: float | None = None,
    max_consecutive_skips: int = 50,
    ema: EMA | None = None,
    ema_model: nn.Module | None = None,
    batch_size: Callable[[Any], int] | None = None,
    callbacks: Iterable[Callback] = (),
) -> TrainState:
    """Run until ``state.step == steps``; return the state.

    Args:
        loss_fn: ``batch -> stats`` with a differentiable scalar ``stats["loss"]``.
        params: the parameters being optimised (for clipping; same as the optimizer's).
        batches: an endless iterator of batches.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        skip_threshold: skip the update when the (pre-clip) gradient norm exceeds it.
        ema, ema_model: update ``ema`` from ``ema_model`` after every applied update.
        batch_size: how many images a batch holds (for throughput); default: the leading size
            of its first tensor.
    """
    params = [p for p in params if p.requires_grad]
    state = state or TrainState()
    callbacks = list(callbacks)
    count = batch_size or _batch_len
    while state.step < steps:
        t0 = time.perf_counter()
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        stats = loss_fn(batch)
        loss = stats["loss"]
        skip = not torch.isfinite(loss).item()
        grad_norm = math.nan
        if not skip:
            loss.backward()
            limit = grad_clip if grad_clip is not None else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
            skip = not math.isfinite(grad_norm) or (skip_threshold is not None and grad_norm > skip_threshold)
        if skip:
            state.skipped += 1
            state.consecutive_skips += 1
            if state.consecutive_skips >= max_consecutive_skips:
                raise TrainingError(
                    f"{state.consecutive_skips} updates in a row were skipped "
                    f"(last loss {float(loss.detach()):.4g}, grad norm {grad_norm:.4g}, "
                    f"skip threshold {skip_threshold}): lower the learning rate or raise the skip threshold"
                )
        else:
            state.consecutive_skips = 0
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update(ema_model)
        state.step += 1
        state.images_seen += count(batch)
        dt = time.perf_counter() - t0
        state.seconds += dt
        state.last = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in stats.items()} | {
            "grad_norm": grad_norm,
            "skipped": float(state.skipped),
            "img_per_s": count(batch) / max(dt, 1e-9),
            "lr": optimizer.param_groups[0]["lr"],
        }
        for cb in callbacks:
            cb(state, state.last)
    return state


def _batch_len(batch: Any) -> int:
    """Images in a batch: the leading size of its first tensor (dict, tuple or tensor batches)."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    first = first[0] if isinstance(first, (tuple, list)) else first
    return len(first) if hasattr(first, "__len__") else 1


def endless(loader: Iterable[Any]) -> Iterator[Any]:
    """Cycle a finite loader forever (re-iterating it, so shuffling samplers reshuffle)."""
    while True:
        yield from loader
