"""The learning-rate and EMA-decay schedules shared by every trainer.

Both are pure functions of the step counter, so a resumed run recomputes them exactly and
nothing about them needs to be saved.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, steps: int, warmup_steps: int, final: float) -> float:
    """Learning-rate factor of update ``step`` (0-based): linear warm-up, then cosine decay.

    ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` updates, then a half cosine from 1
    down to ``final`` at ``step == steps`` (held at ``final`` beyond). Loshchilov & Hutter,
    "SGDR: Stochastic gradient descent with warm restarts", 2017, Eq. 5 (one cycle, no restart),
    with the linear warm-up of Goyal et al., "Accurate, large minibatch SGD", 2017, §2.2.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_warmup(step: int, rate: float) -> float:
    """EMA decay ``min(rate, (1 + step) / (10 + step))``: early averages do not hold on to the init.

    The warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``.
    """
    return min(rate, (1.0 + step) / (10.0 + step))
