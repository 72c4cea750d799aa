"""The one resume format of every trainer: ``OUT.train.safetensors`` + ``OUT.train.json``.

A checkpoint pair (:mod:`boed.runtime.checkpoints`, so atomic and sha256-verified, never pickled)
of kind ``train-state``. Tensor names::

    module.<name>.<key>         state_dict of each named module ("model", "ema", ...)
    optim.<name>.<param id>.<slot>   per-parameter optimiser state (Adam moments, step, ...)
    best.<key>                  the best-so-far weights (optional)

and the JSON holds ``trains`` (what is trained: "classifier", "sampler", ...), ``state`` (the
:class:`~boed.runtime.training.TrainState` progress), ``optimizers`` (each optimiser's param groups
and non-tensor slots), ``seed``, and whatever the model side adds (configs, best metrics, history).
Random draws are re-derived from ``(seed, rank, step)`` by the trainer and the data path, so no
RNG state needs saving and every rank resumes exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boed.runtime.checkpoints import CheckpointError, checkpoint_paths, load_checkpoint, save_checkpoint
from boed.runtime.training import TrainState

KIND = "train-state"


def resume_path(out: str | os.PathLike) -> Path:
    """The stem of the resume pair of checkpoint ``out``: ``OUT.train``."""
    weights, _ = checkpoint_paths(out)
    return weights.with_name(weights.with_suffix("").name + ".train")


def pack_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors ``prefix.<param id>.<slot>`` and the JSON rest (param groups, scalar slots)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unpack_optimizer(
    opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], blob: dict[str, Any], prefix: str
) -> None:
    """Inverse of :func:`pack_optimizer` (loads into ``opt``)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            pid, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, slots in blob.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(slots)
    current = opt.state_dict()["param_groups"]
    groups = []
    for saved, now in zip(blob["param_groups"], current, strict=False):
        groups.append({k: (tuple(v) if isinstance(now.get(k), tuple) else v) for k, v in saved.items()})
    if len(blob["param_groups"]) != len(current):
        raise CheckpointError(
            f"optimiser {prefix!r}: {len(blob['param_groups'])} parameter groups saved, {len(current)} now"
        )
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_resume(
    out: str | os.PathLike,
    *,
    trains: str,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: TrainState,
    seed: int,
    best: Mapping[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the resume pair of ``out`` (see the module docstring); returns its weights path."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        tensors |= {f"module.{name}.{k}": v for k, v in module.state_dict().items()}
    opt_meta = {}
    for name, opt in optimizers.items():
        t, opt_meta[name] = pack_optimizer(opt, f"optim.{name}")
        tensors |= t
    if best is not None:
        tensors |= {f"best.{k}": v for k, v in best.items()}
    record = {
        **(meta or {}),
        "kind": KIND,
        "trains": trains,
        "state": state.as_dict(),
        "optimizers": opt_meta,
        "seed": int(seed),
        "has_best": best is not None,
    }
    return save_checkpoint(resume_path(out), tensors, record)


@dataclass
class Resume:
    """A loaded resume pair; :meth:`restore` puts it back into the live objects."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> TrainState:
        return TrainState.from_dict(self.meta["state"])

    @property
    def best(self) -> dict[str, torch.Tensor] | None:
        if not self.meta.get("has_best"):
            return None
        return {k[5:]: v for k, v in self.tensors.items() if k.startswith("best.")}

    def restore(
        self, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> None:
        for name, module in modules.items():
            prefix = f"module.{name}."
            sd = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(sd)
            except RuntimeError as exc:
                raise CheckpointError(f"{self.path}: saved {name!r} does not fit the model ({exc})") from exc
        for name, opt in optimizers.items():
            if name not in self.meta["optimizers"]:
                raise CheckpointError(f"{self.path}: no state of optimiser {name!r}")
            unpack_optimizer(opt, self.tensors, self.meta["optimizers"][name], f"optim.{name}")


def load_resume(out: str | os.PathLike, *, trains: str, device: str | torch.device = "cpu") -> Resume:
    """Load and verify the resume pair of ``out``; it must be one that ``trains`` the same kind."""
    path = resume_path(out)
    ckpt = load_checkpoint(path, kind=KIND, device=str(device))
    if ckpt.meta.get("trains") != trains:
        raise CheckpointError(
            f"{path}: resume state of a {ckpt.meta.get('trains')!r} run, not a {trains!r} run"
        )
    return Resume(path=ckpt.path, tensors=dict(ckpt.tensors), meta=ckpt.meta)
