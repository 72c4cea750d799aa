"""The one training loop of the project: every model (classifier, samplers) trains through it.

The model side supplies, for each optimiser, a :class:`Phase`: ``loss_fn(batch) -> stats`` (a
dict with a differentiable scalar under ``loss_key``, default ``"loss"``, plus any scalars to log),
the optimiser, and optionally a learning-rate schedule, gradient clipping, a skip threshold and an
:class:`EMA`. :func:`train` then runs, for every step and every phase in order:

1. set each parameter group's learning rate to ``base_lr * schedule(step)``;
2. forward (``loss_fn``), ``backward`` (always, on every rank: DDP all-reduces gradients inside
   ``backward``, so a rank that skipped it would leave the others waiting; a non-finite loss is
   replaced by a zero with the same graph);
3. clip the global gradient norm, and decide *collectively* whether to skip the update: a rank
   votes to skip when its loss or gradient norm is non-finite or the norm exceeds
   ``skip_threshold`` (the VD-VAE recipe, Child, "Very deep VAEs generalize autoregressive models
   and can outperform them on images", 2021, §4); the votes are all-reduced (MAX) so that every
   rank steps or skips together and the replicas never diverge;
4. ``optimizer.step()`` and the EMA update unless skipped.

After every step the callbacks ``cb(state, stats)`` run (progress, validation, checkpoints; see
:class:`Every`). ``max_consecutive_skips`` steps in a row with a skipped update raise
:class:`TrainingError` instead of silently training nothing. With ``seed`` given, the global torch
RNG is re-seeded from ``(seed, rank, step)`` after each batch is fetched and before its forward
passes (after, because starting a DataLoader iterator draws from that RNG), so a run resumed at step ``k``
draws exactly what the uninterrupted run drew (nothing random has to be saved).

Extension point: several optimisers
-----------------------------------
A model with more than one optimiser (a GAN's discriminator and generator, say) passes several
phases, e.g. ``[Phase(d_loss, opt_d, name="d"), Phase(g_loss, opt_g, name="g", ema=g_ema)]``: each
phase does its own forward/backward/step in that order within a step (so the generator's loss sees
the freshly updated discriminator), with its own schedule, clip and skip decision; its stats are
logged with the prefix ``"d."`` / ``"g."``. ``Phase(when=...)`` runs a phase only on the steps
where ``when(step)`` is true, e.g. a WGAN-GP's generator every ``n_critic``-th step while the critic
updates on every step (each step has its own batch, so each critic update sees fresh data); the
step counter is shared by every rank, so all ranks agree. Resume files (:mod:`boed.runtime.resume`) store any
number of optimisers by name.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from boed.runtime.data import step_seed


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. every update is being skipped)."""


@dataclass
class TrainState:
    """Mutable progress of a run; saved in resume files so ``--resume`` continues it."""

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
            "consecutive_skips": self.consecutive_skips,
            "images_seen": self.images_seen,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(
            **{
                k: data[k]
                for k in ("step", "skipped", "consecutive_skips", "images_seen", "seconds")
                if k in data
            }
        )


class EMA:
    """Exponential moving average of ``source``'s parameters and buffers (a frozen copy).

    ``decay`` is a constant or a function of the step (e.g. :func:`boed.runtime.schedule.ema_warmup`).
    """

    def __init__(self, source: nn.Module, decay: float | Callable[[int], float] = 0.999):
        self.source = source
        self.decay = decay
        self.module = copy.deepcopy(source).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return self.decay(step) if callable(self.decay) else float(self.decay)

    @torch.no_grad()
    def update(self, step: int = 0) -> None:
        weight = 1.0 - self.decay_at(step)
        for ema_p, p in zip(self.module.parameters(), self.source.parameters(), strict=True):
            ema_p.lerp_(p.detach(), weight)
        for ema_b, b in zip(self.module.buffers(), self.source.buffers(), strict=True):
            ema_b.copy_(b)


@dataclass
class Phase:
    """One optimiser's part of a training step (see the module docstring).

    Attributes:
        loss_fn: ``batch -> stats`` with a differentiable scalar ``stats[loss_key]``.
        optimizer: steps the parameters of its groups (those with ``requires_grad`` are clipped).
        schedule: learning-rate factor of step ``s`` (``None``: the groups' ``lr`` stays as set).
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        skip_threshold: skip the update when the (pre-clip) gradient norm exceeds it.
        ema: updated after every applied update of this phase.
        when: run this phase only on the steps ``s`` where ``when(s)`` is true (``None``: every
            step).
    """

    loss_fn: Callable[[Any], dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    name: str = "main"
    loss_key: str = "loss"
    schedule: Callable[[int], float] | None = None
    grad_clip: float | None = None
    skip_threshold: float | None = None
    ema: EMA | None = None
    when: Callable[[int], bool] | None = None

    def params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]


Callback = Callable[[TrainState, dict[str, float]], None]


@dataclass
class Every:
    """A callback that calls ``fn(state, stats)`` every ``n`` steps and at step ``last``."""

    n: int
    fn: Callback
    last: int | None = None

    def __call__(self, state: TrainState, stats: dict[str, float]) -> None:
        if (self.n > 0 and state.step % self.n == 0) or state.step == self.last:
            self.fn(state, stats)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _distributed() else 0


def any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` OR-ed over all ranks (an all-reduce MAX); the flag itself without torch.distributed."""
    if not _distributed():
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _run_phase(phase: Phase, batch: Any, step: int) -> tuple[dict[str, Any], float, bool]:
    """One forward/backward/(step) of ``phase``; returns ``(stats, grad_norm, skipped)``."""
    opt = phase.optimizer
    if phase.schedule is not None:
        factor = phase.schedule(step)
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * factor
    opt.zero_grad(set_to_none=True)
    stats = phase.loss_fn(batch)
    loss = stats[phase.loss_key]
    finite = bool(torch.isfinite(loss.detach()).all())
    # every rank calls backward (DDP synchronises inside it); a non-finite loss backpropagates zero
    (loss if finite else torch.nan_to_num(loss, 0.0, 0.0, 0.0) * 0.0).backward()
    params = phase.params()
    limit = phase.grad_clip if phase.grad_clip is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit)) if params else 0.0
    vote = (
        not finite
        or not math.isfinite(grad_norm)
        or (phase.skip_threshold is not None and grad_norm > phase.skip_threshold)
    )
    skip = any_rank(vote, loss.device)
    if not skip:
        opt.step()
        if phase.ema is not None:
            phase.ema.update(step)
    return stats, grad_norm, skip


def train(
    phases: Phase | Sequence[Phase],
    batches: Iterator[Any],
    steps: int,
    *,
    state: TrainState | None = None,
    seed: int | None = None,
    max_consecutive_skips: int = 50,
    batch_size: Callable[[Any], int] | None = None,
    callbacks: Iterable[Callback] = (),
) -> TrainState:
    """Run until ``state.step == steps``; return the state.

    Args:
        phases: one :class:`Phase` per optimiser, run in order every step.
        batches: an endless iterator of batches (one per step, shared by the phases).
        seed: re-seed the global torch RNG from ``(seed, rank, step)`` before every step.
        batch_size: how many images a batch holds (for throughput); default: the leading size
            of its first tensor.
        callbacks: ``cb(state, stats)`` after every step; ``stats`` holds the phases' stats as
            floats (prefixed ``"name."`` when there are several phases) and ``grad_norm``,
            ``skipped``, ``img_per_s``, ``lr``.
    """
    phases = [phases] if isinstance(phases, Phase) else list(phases)
    state = state or TrainState()
    callbacks = list(callbacks)
    count = batch_size or _batch_len
    rank = _rank()
    while state.step < steps:
        t0 = time.perf_counter()
        batch = next(batches)
        if seed is not None:  # after the batch: starting a DataLoader iterator draws from the RNG
            torch.manual_seed(step_seed(seed, rank, state.step, stream=0))
        last: dict[str, float] = {}
        any_skipped = False
        for phase in phases:
            if phase.when is not None and not phase.when(state.step):
                continue
            stats, grad_norm, skipped = _run_phase(phase, batch, state.step)
            any_skipped |= skipped
            state.skipped += int(skipped)
            prefix = f"{phase.name}." if len(phases) > 1 else ""
            last |= {prefix + k: _float(v) for k, v in stats.items()}
            last |= {prefix + "grad_norm": grad_norm, prefix + "lr": phase.optimizer.param_groups[0]["lr"]}
        if any_skipped:
            state.consecutive_skips += 1
            if state.consecutive_skips >= max_consecutive_skips:
                thresholds = [p.skip_threshold for p in phases]
                raise TrainingError(
                    f"{state.consecutive_skips} updates in a row were skipped (last stats "
                    + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.endswith(("loss", "grad_norm")))
                    + f", skip threshold {thresholds if len(phases) > 1 else thresholds[0]}): "
                    "lower the learning rate or raise the skip threshold"
                )
        else:
            state.consecutive_skips = 0
        state.step += 1
        n = count(batch)
        state.images_seen += n
        dt = time.perf_counter() - t0
        state.seconds += dt
        state.last = last | {"skipped": float(state.skipped), "img_per_s": n / max(dt, 1e-9)}
        for cb in callbacks:
            cb(state, state.last)
    return state


def _float(value: Any) -> float:
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def _batch_len(batch: Any) -> int:
    """Images in a batch: the leading size of its first tensor (dict, tuple or tensor batches).

    A dict batch from ``image_loader`` starts with its list of ids, so the count is taken from the
    first tensor, not from the first value."""
    if isinstance(batch, dict):
        values = list(batch.values())
    else:
        values = list(batch) if isinstance(batch, (tuple, list)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.dim() else 1
    first = values[0] if values else batch
    return len(first) if hasattr(first, "__len__") else 1
