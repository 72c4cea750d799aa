"""Samplers by name: ``build_sampler(name, checkpoint=None, *, preset="cpu", device="cpu", **options)``.

One :class:`SamplerSpec` per name in :data:`SPECS`; :data:`SAMPLERS` is their names in order. A
spec points (by ``"module:attribute"``, imported only when used, so ``import generative.registry``
stays light) to either

* a trainable **family** (:class:`generative.family.SamplerFamily`): trained with ``boed
  train-sampler --sampler NAME`` by the shared trainer, loaded from its ``sampler`` checkpoint by
  :func:`generative.family.load_family_model`, wrapped by the family's ``make_sampler``; or
* a **builder** ``build(checkpoint, *, preset, device, **options) -> Sampler`` for samplers that
  do not train: with no file at all (``needs_checkpoint=False``), or from an artifact built from
  training images by the spec's ``artifact`` function ``(images (N, 1, S, S), out, **kw) -> Path``
  (a mean image, a retrieval index).

A checkpoint records the sampler it was trained as in ``meta["sampler"]`` and is refused under
another name unless its family accepts it (the ``vae`` baseline runs any AIPO checkpoint's VAE).
``checkpoint=None`` loads the shipped ``generative/weights/<stem>-<preset>.*`` where there is one.

Adding a sampler: write its module (a family, or a builder), add one spec to :data:`SPECS`; the
shared contract (tests/generative/test_sampler_contract.py) then runs on it automatically.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generative.errors import SamplerError

WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class SamplerSpec:
    """How to build (and train) the sampler ``name``; see the module docstring.

    Attributes:
        family: ``"module:ATTR"`` of its :class:`~generative.family.SamplerFamily` (trainable).
        build: ``"module:function"`` of its builder (samplers without a family).
        artifact: ``"module:function"`` building its data artifact from training images.
        needs_checkpoint: whether it needs a file (a checkpoint or an artifact).
        deterministic: the n completions of one input are identical (a point estimate).
        shipped: stem of its shipped checkpoint in ``generative/weights`` (``<stem>-<preset>``).
        no_shipped: what to tell a user when there is no shipped file (default: how to train one).
    """

    name: str
    summary: str
    family: str | None = None
    build: str | None = None
    artifact: str | None = None
    needs_checkpoint: bool = True
    deterministic: bool = False
    shipped: str | None = None
    no_shipped: str | None = None


SPECS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec(
            "aipo",
            "AIPO (forward KL, Eq. 10 of Harvey et al. 2022): the partial encoder of a hierarchical VAE",
            family="generative.aipo:FAMILY",
            shipped="aipo-phantom",
        ),
        SamplerSpec(
            "aipo-r",
            "AIPO-R (reverse KL, Eq. 15 of Harvey et al. 2022)",
            family="generative.aipo:FAMILY",
            no_shipped=(
                "there is no shipped AIPO-R checkpoint (the one trained on the CPU failed its evaluation); "
                "train one with `boed train-sampler --sampler aipo-r --pretrained-vae "
                "generative/weights/aipo-phantom-{preset} --preset {preset} --out CKPT` and pass CKPT"
            ),
        ),
        SamplerSpec(
            "vae",
            "the unconditional VAE of any AIPO checkpoint, observed pixels pasted (ignores the observation)",
            family="generative.aipo:FAMILY",
            shipped="aipo-phantom",
        ),
        SamplerSpec(
            "pixelcnn-local",
            "PixelCNN over a local causal zone (Burlin et al. 2017, §6.2), raster-order inpainting",
            family="generative.pixelcnn_local:FAMILY",
        ),
        SamplerSpec(
            "row-lstm",
            "Row LSTM (van den Oord et al. 2016, §3.1), raster-order inpainting",
            family="generative.pixel_rnn:ROW_LSTM",
        ),
        SamplerSpec(
            "diagonal-bilstm",
            "Diagonal BiLSTM (van den Oord et al. 2016, §3.2), raster-order inpainting",
            family="generative.pixel_rnn:DIAGONAL_BILSTM",
        ),
        SamplerSpec(
            "flattened-row-lstm",
            "Flattened Row LSTM (Burlin et al. 2017, §6.3), raster-order inpainting",
            family="generative.pixel_rnn:FLATTENED_ROW_LSTM",
        ),
        SamplerSpec(
            "anp",
            "Attentive Neural Process (Kim et al. 2019): pixel coordinates to intensities, "
            "a latent per completion",
            family="generative.anp:FAMILY",
        ),
        SamplerSpec(
            "pixel-constrained",
            "Pixel Constrained CNN (Dupont & Suresha 2019): exact raster-order draws with likelihoods",
            family="generative.pixel_constrained:FAMILY",
            shipped="pixel-constrained-phantom",
        ),
        SamplerSpec(
            "conditional-pixelcnn",
            "Conditional PixelCNN baseline (masked image as conditioning; tends to ignore it, §5.2)",
            family="generative.pixel_constrained:FAMILY",
        ),
        SamplerSpec(
            "diffusion",
            "mask-conditioned DDPM (Ho et al. 2020) on cat([x_t, x*m, m]), DDIM sampling (Song et al. 2021)",
            family="generative.diffusion.family:FAMILY",
            no_shipped=(
                "there is no shipped diffusion checkpoint (the one trained on the shared CPU was too short: "
                "its completions gave the classifier chance-level Any accuracy, generative/README.md); train "
                "one with `boed train-sampler --sampler diffusion --preset {preset} --out CKPT` and pass CKPT"
            ),
        ),
        SamplerSpec(
            "repaint",
            "RePaint (Lugmayr et al. 2022): unconditional DDPM, known pixels re-noised each step, resampling",
            family="generative.diffusion.family:FAMILY",
            no_shipped=(
                "there is no shipped repaint checkpoint (the one trained on the shared CPU was too short: "
                "its completions gave the classifier chance-level Any accuracy, generative/README.md); train "
                "one with `boed train-sampler --sampler repaint --preset {preset} --out CKPT` and pass CKPT"
            ),
        ),
        SamplerSpec(
            "gan-yeh",
            "DCGAN latent search (Yeh et al. 2017): importance-weighted context + prior loss, "
            "Poisson blending",
            family="generative.gan.dcgan:FAMILY",
        ),
        SamplerSpec(
            "wgan-vitoria",
            "improved WGAN-GP latent search (Vitoria et al. 2018): context + gradient + prior loss, blending",
            family="generative.gan.wgan:FAMILY",
        ),
        SamplerSpec(
            "context-encoder",
            "context encoder (Pathak et al. 2016), L2 loss: one deterministic completion (a point estimate)",
            family="generative.context_encoder:FAMILY",
            deterministic=True,
        ),
        SamplerSpec(
            "context-encoder-adv",
            "context encoder with a DCGAN loss and the tricks of Burlin et al. 2017 §5.2 (deterministic)",
            family="generative.context_encoder:FAMILY",
            deterministic=True,
        ),
        SamplerSpec(
            "context-encoder-wgan",
            "context encoder with a Wasserstein critic, Burlin et al. 2017 §5.3 (deterministic)",
            family="generative.context_encoder:FAMILY",
            deterministic=True,
        ),
        SamplerSpec(
            "retrieval",
            "retrieval importance sampling (Harvey et al. 2019): weighted training images from an index",
            build="generative.retrieval:build",
            artifact="generative.retrieval:build_index",
            no_shipped=(
                "the retrieval sampler needs an index: build one with `boed build-retrieval-index "
                "--images chestxray --preset {preset} --n-train N --out INDEX` and pass INDEX"
            ),
        ),
        SamplerSpec(
            "harmonic",
            "harmonic (Laplace) inpainting: a training-free deterministic fill",
            build="generative.fills:build_harmonic",
            needs_checkpoint=False,
            deterministic=True,
        ),
        SamplerSpec(
            "tv",
            "total-variation inpainting (Chambolle-Pock): a training-free deterministic fill",
            build="generative.fills:build_tv",
            needs_checkpoint=False,
            deterministic=True,
        ),
        SamplerSpec(
            "mean",
            "the mean training image in the missing pixels: a deterministic reference",
            build="generative.fills:build_mean",
            artifact="generative.fills:build_mean_image",
            deterministic=True,
        ),
    )
}
SAMPLERS: tuple[str, ...] = tuple(SPECS)


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_spec(name: str) -> SamplerSpec:
    """The spec of sampler ``name``; a ``SamplerError`` listing the valid names otherwise."""
    if name not in SPECS:
        raise SamplerError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    return SPECS[name]


def get_family(name: str):
    """The :class:`~generative.family.SamplerFamily` of sampler ``name``, or None when it does not train."""
    spec = get_spec(name)
    return _resolve(spec.family) if spec.family else None


def trainable() -> tuple[str, ...]:
    """The names ``boed train-sampler --sampler`` accepts."""
    return tuple(name for name, spec in SPECS.items() if spec.family)


def _no_shipped(name: str, preset: str) -> str:
    spec = get_spec(name)
    if spec.no_shipped:
        return spec.no_shipped.format(preset=preset, name=name)
    if spec.artifact:
        return f"no shipped {name} file for preset {preset!r}; build one from training images and pass it"
    return (
        f"no shipped {name} checkpoint for preset {preset!r}; train one with "
        f"`boed train-sampler --sampler {name} --preset {preset} --out CKPT` and pass it"
    )


def shipped_checkpoint(preset: str = "cpu", name: str = "aipo") -> Path:
    """Path (stem) of the shipped checkpoint of sampler ``name`` for ``preset``.

    Raises:
        SamplerError: ``name`` has no shipped checkpoint.
    """
    spec = get_spec(name)
    if spec.shipped is None:
        raise SamplerError(_no_shipped(name, preset))
    return WEIGHTS / f"{spec.shipped}-{preset}"


def checkpoint_kind(meta: dict[str, Any]) -> str | None:
    """The sampler a checkpoint was trained as: ``meta["sampler"]``, else (old AIPO files) its objective's."""
    kind = meta.get("sampler")
    if kind in SPECS:
        return kind
    config = meta.get("config")
    objective = config.get("objective") if isinstance(config, dict) else None
    from generative.aipo import SAMPLER_FOR_OBJECTIVE

    return SAMPLER_FOR_OBJECTIVE.get(objective) if isinstance(objective, str) else None


def check_kind(name: str, kind: str | None, path: Any, family: Any = None) -> None:
    """Refuse to run a checkpoint of sampler kind ``kind`` as sampler ``name`` (see module docstring)."""
    family = family or get_family(name)
    if family.accepts(name, kind):
        return
    if kind is None:
        raise SamplerError(
            f"{path}: the checkpoint does not record which sampler it was trained as (no 'sampler' "
            f"or known config objective); it cannot be run as {name!r}"
        )
    if kind == "vae" and name in ("aipo", "aipo-r"):
        hint = "--sampler vae uses only its VAE"
    elif kind in ("aipo", "aipo-r"):
        hint = f"run it as --sampler {kind} (or vae)"
    else:
        hint = f"run it as --sampler {kind}"
    raise SamplerError(f"{path}: is a {kind!r} sampler checkpoint, requested as {name!r}; {hint}")


def build_sampler(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    preset: str = "cpu",
    device: str = "cpu",
    **options: Any,
):
    """Build the sampler ``name`` from ``checkpoint`` (default: the shipped one for ``preset``).

    ``options`` are the sampler's own sampling options (``temperature`` for AIPO, ...; ``None``
    values mean the default); unknown ones are a ``SamplerError``.

    Raises:
        SamplerError: unknown name, no shipped checkpoint for ``name`` / ``preset``, a checkpoint
            of another sampler kind than ``name`` asks for, or one that does not fit (one line
            naming the file).
        CheckpointError: a missing or corrupt checkpoint pair (boed.runtime.checkpoints).
    """
    spec = get_spec(name)
    from boed.runtime.checkpoints import checkpoint_paths

    if checkpoint is None and spec.needs_checkpoint:
        if spec.shipped is None:
            raise SamplerError(_no_shipped(name, preset))
        checkpoint = shipped_checkpoint(preset, name)
        if not checkpoint_paths(checkpoint)[1].is_file():
            raise SamplerError(_no_shipped(name, preset))
    if not spec.family:
        return _resolve(spec.build)(checkpoint, preset=preset, device=device, **options)

    from boed.runtime.checkpoints import read_meta
    from generative.family import load_family_model

    family = _resolve(spec.family)
    check_kind(name, checkpoint_kind(read_meta(checkpoint)), checkpoint_paths(checkpoint)[1], family)
    model, meta = load_family_model(checkpoint, family, device)
    return family.make_sampler(model, name=name, sha256=meta["sha256"], meta=meta, **options)


def untrained_checkpoint(
    name: str, out: str | Path, *, preset: str = "tiny", seed: int = 0, images: Any = None, **changes: Any
) -> Path | None:
    """A file sampler ``name`` can be built from without training, for tests and smoke runs.

    Trainable samplers: a freshly initialised (seeded) model of ``preset`` saved as a ``sampler``
    checkpoint exactly as the trainer writes it (``changes`` override config fields). Samplers
    built from data: their artifact from ``images`` ``(N, 1, S, S)`` (default: 16 seeded random
    images of the preset's size, 32 for ``tiny``). Samplers without a file: ``None``.
    """
    import torch

    spec = get_spec(name)
    out = Path(out)
    if spec.family:
        from boed.runtime.checkpoints import save_checkpoint
        from generative.family import checkpoint_meta, model_tensors

        family = _resolve(spec.family)
        config = family.for_name(family.config(preset, **changes), name)
        torch.manual_seed(seed)
        model = family.build_model(config)
        save_checkpoint(out, model_tensors(model), checkpoint_meta(family, config, name, data={}))
        return out
    if spec.artifact:
        if images is None:
            size = {"tiny": 32, "cpu": 64, "paper": 256}.get(preset, 32)
            images = torch.rand(16, 1, size, size, generator=torch.Generator().manual_seed(seed))
        return _resolve(spec.artifact)(images, out, **changes)
    return None
