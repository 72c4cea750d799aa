"""Samplers by name: ``build_sampler(name, checkpoint=None, *, preset="cpu", device="cpu")``.

* ``aipo``: AIPO (forward KL, Eq. 10 of 001_acb47c175b470c6b.txt): the shipped default.
* ``aipo-r``: AIPO-R (reverse KL, Eq. 15).
* ``vae``: the unconditional hierarchical VAE of the same checkpoint, observed pixels pasted in (a
  baseline that ignores the observation).

``checkpoint=None`` loads the shipped ``generative/weights/aipo-phantom-<preset>.*`` (for ``aipo-r``:
``aipo-r-phantom-<preset>.*``, trained on the shipped AIPO checkpoint's VAE in the pretrained mode of
§3.2). Any sampler checkpoint of ours serves every name (an AIPO-R checkpoint asked for as ``aipo``
still samples from its own partial encoder; the name is what the run records).
"""

from __future__ import annotations

from pathlib import Path

from generative.errors import SamplerError

SAMPLERS: tuple[str, ...] = ("aipo", "aipo-r", "vae")
WEIGHTS = Path(__file__).resolve().parent / "weights"


def shipped_checkpoint(preset: str = "cpu", name: str = "aipo") -> Path:
    """Path (stem) of the shipped checkpoint of sampler ``name`` for ``preset``."""
    return WEIGHTS / f"{'aipo-r' if name == 'aipo-r' else 'aipo'}-phantom-{preset}"


def build_sampler(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    preset: str = "cpu",
    device: str = "cpu",
    temperature: float | None = None,
    pixel_noise: bool | None = None,
):
    """Build the sampler ``name`` from ``checkpoint`` (default: the shipped one for ``preset``)."""
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    from boed.runtime.checkpoints import checkpoint_paths

    if checkpoint is None:
        checkpoint = shipped_checkpoint(preset, name)
        if not checkpoint_paths(checkpoint)[1].is_file():
            raise SamplerError(
                f"no shipped {name} checkpoint for preset {preset!r} ({checkpoint}.json); train one with "
                f"`boed train-sampler --sampler {name} --preset {preset} --out CKPT` and pass it"
            )
    import torch

    from generative.aipo import AIPOSampler
    from generative.checkpoint import load_model

    model, meta = load_model(checkpoint, device)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU
    return AIPOSampler(
        model, name=name, sha256=meta["sha256"], meta=meta, temperature=temperature, pixel_noise=pixel_noise
    )
