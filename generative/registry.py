"""Samplers by name: ``build_sampler(name, checkpoint=None, *, preset="cpu", device="cpu")``.

* ``aipo``: AIPO (forward KL, Eq. 10 of Harvey, Naderiparizi & Wood, "Image Completion via
  Inference in Deep Generative Models", 2022): samples from the partial encoder of an AIPO
  checkpoint. The shipped default.
* ``aipo-r``: AIPO-R (reverse KL, Eq. 15): samples from the partial encoder of an AIPO-R
  checkpoint. No AIPO-R checkpoint is shipped (see generative/README.md); train one with
  ``boed train-sampler --sampler aipo-r`` and pass it.
* ``vae``: the unconditional hierarchical VAE of any sampler checkpoint, observed pixels pasted in
  (a baseline that ignores the observation; it never uses the partial encoder).

A checkpoint records the kind of sampler it was trained as in ``meta["sampler"]`` (objective
``vae`` → ``vae``, ``aipo`` / ``vae+aipo`` → ``aipo``, ``aipo-r`` / ``vae+aipo-r`` → ``aipo-r``;
``generative.training.SAMPLER_FOR_OBJECTIVE``). ``aipo`` needs an ``aipo`` checkpoint and
``aipo-r`` an ``aipo-r`` one, since their partial encoders were trained with different objectives
(and a ``vae`` checkpoint's partial encoder is untrained); ``vae`` accepts every kind.
``checkpoint=None`` loads the shipped ``generative/weights/aipo-phantom-<preset>.*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from generative.errors import SamplerError

SAMPLERS: tuple[str, ...] = ("aipo", "aipo-r", "vae")
WEIGHTS = Path(__file__).resolve().parent / "weights"
# sampler name -> stem of its shipped checkpoint (the VAE baseline uses the AIPO checkpoint's VAE)
SHIPPED: dict[str, str] = {"aipo": "aipo-phantom", "vae": "aipo-phantom"}


def shipped_checkpoint(preset: str = "cpu", name: str = "aipo") -> Path:
    """Path (stem) of the shipped checkpoint of sampler ``name`` for ``preset``.

    Raises:
        SamplerError: ``name`` has no shipped checkpoint (``aipo-r``).
    """
    if name not in SHIPPED:
        raise SamplerError(_no_shipped(name, preset))
    return WEIGHTS / f"{SHIPPED[name]}-{preset}"


def _no_shipped(name: str, preset: str) -> str:
    if name == "aipo-r":
        return (
            "there is no shipped AIPO-R checkpoint (the one trained on the CPU failed its evaluation); "
            "train one with `boed train-sampler --sampler aipo-r --pretrained-vae "
            f"generative/weights/aipo-phantom-{preset} --preset {preset} --out CKPT` and pass CKPT"
        )
    return (
        f"no shipped {name} checkpoint for preset {preset!r}; train one with "
        f"`boed train-sampler --sampler {name} --preset {preset} --out CKPT` and pass it"
    )


def checkpoint_kind(meta: dict[str, Any]) -> str | None:
    """The sampler kind a checkpoint was trained as: ``meta["sampler"]``, else from its objective."""
    kind = meta.get("sampler")
    if kind in SAMPLERS:
        return kind
    config = meta.get("config")
    objective = config.get("objective") if isinstance(config, dict) else None
    from generative.training import SAMPLER_FOR_OBJECTIVE

    return SAMPLER_FOR_OBJECTIVE.get(objective) if isinstance(objective, str) else None


def check_kind(name: str, kind: str | None, path: Any) -> None:
    """Refuse to run a checkpoint of sampler kind ``kind`` as sampler ``name`` (see module docstring)."""
    if name == "vae" or kind == name:
        return
    if kind is None:
        raise SamplerError(
            f"{path}: the checkpoint does not record which sampler it was trained as (no 'sampler' "
            f"or known config objective); it cannot be run as {name!r}"
        )
    hint = "--sampler vae uses only its VAE" if kind == "vae" else f"run it as --sampler {kind} (or vae)"
    raise SamplerError(f"{path}: is a {kind!r} sampler checkpoint, requested as {name!r}; {hint}")


def build_sampler(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    preset: str = "cpu",
    device: str = "cpu",
    temperature: float | None = None,
    pixel_noise: bool | None = None,
):
    """Build the sampler ``name`` from ``checkpoint`` (default: the shipped one for ``preset``).

    Raises:
        SamplerError: unknown name, no shipped checkpoint for ``name`` / ``preset``, or a
            checkpoint of another sampler kind than ``name`` asks for (one line naming the file).
        CheckpointError: a missing, corrupt or mismatching checkpoint (generative.checkpoint).
    """
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    from boed.runtime.checkpoints import checkpoint_paths

    if checkpoint is None:
        checkpoint = shipped_checkpoint(preset, name)
        if not checkpoint_paths(checkpoint)[1].is_file():
            raise SamplerError(_no_shipped(name, preset))
    import torch

    from boed.runtime.checkpoints import read_meta
    from generative.aipo import AIPOSampler
    from generative.checkpoint import load_model

    check_kind(name, checkpoint_kind(read_meta(checkpoint)), checkpoint_paths(checkpoint)[1])
    model, meta = load_model(checkpoint, device)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU
    return AIPOSampler(
        model, name=name, sha256=meta["sha256"], meta=meta, temperature=temperature, pixel_noise=pixel_noise
    )
