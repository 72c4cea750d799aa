"""Training of the AIPO / AIPO-R samplers and their unconditional VAE (model code is in aipo.py).

The model-specific layer on :mod:`boed.runtime.training` (gradient clipping, DDP-safe skipping of updates
above a threshold with the count logged, the all-skipped guard, EMA of the weights with a warm-up) and
:mod:`boed.runtime.data` (the streaming data path: DataLoader workers decode and resize images one by one, a
seeded epoch order, one shard per rank). Masks come from the AIPO mask distribution
(``datasets.masks.aipo_masks``: 0–5 squares of side 35 %, §4 of Harvey et al., "Image Completion via
Inference in Deep Generative Models" (2021)), drawn per batch from a generator seeded by ``(seed, rank,
step)``; the learning rate warms up linearly then decays by a cosine to a tenth; the EMA weights are
validated periodically on an in-memory subset of ``val_images`` validation images. Two checkpoints:

* ``OUT`` (kind ``sampler``): the EMA weights only, what :func:`generative.registry.build_sampler`
  loads; the JSON holds the resolved config, the data description (``data``) and provenance
  (``trained_on``), validation metrics and the training state.
* ``OUT.train`` (kind ``train-state``, :mod:`boed.runtime.resume`): raw weights, EMA, AdamW state
  and progress, for ``--resume`` (bit-exact: the run continues as if never stopped).

Runs under ``torchrun``: each rank reads its own shard, gradients are averaged by DDP, rank 0
validates and writes the checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from boed.config import to_dict
from boed.runtime.checkpoints import CheckpointError, save_checkpoint
from boed.runtime.data import (
    TensorImages,
    default_workers,
    image_loader,
    memory_subset,
    step_generator,
)
from boed.runtime.devices import DistInfo
from boed.runtime.provenance import data_record, resume_data_mismatch, trained_on
from boed.runtime.resume import load_resume, resume_path, save_resume
from boed.runtime.schedule import ema_warmup, warmup_cosine
from boed.runtime.training import EMA, Every, Phase, TrainState, train
from generative.aipo import AIPO
from generative.checkpoint import load_model
from generative.config import AIPOConfig
from generative.errors import SamplerError

TRAINS = "sampler"
MASK_STREAM = 1
FINAL_LR_FACTOR = 0.1  # cosine decay to a tenth of the peak learning rate
SAMPLER_FOR_OBJECTIVE = {
    "vae": "vae",
    "aipo": "aipo",
    "vae+aipo": "aipo",
    "aipo-r": "aipo-r",
    "vae+aipo-r": "aipo-r",
}
MaskFn = Callable[[int, int, torch.Generator], torch.Tensor]


@dataclass
class TrainOptions:
    """How to run (not what the model is): paths, seeds, cadence, loader workers."""

    out: Path
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    pretrained_vae: Path | None = None
    init_partial_from_encoder: bool | None = None  # None: the paper's choice (yes for AIPO-R only)
    val_every: int = 250
    ckpt_every: int = 250
    val_images: int = 128
    workers: int | None = None  # DataLoader workers (None: one per spare core, at most 4)
    command: str = ""


def train_state_path(out: Path) -> Path:
    """The resume pair's stem, ``OUT.train`` (:func:`boed.runtime.resume.resume_path`)."""
    return resume_path(out)


def default_masks() -> MaskFn:
    from datasets.masks import aipo_masks

    return aipo_masks


def lr_schedule(config: AIPOConfig) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: linear warm-up, then cosine decay to a tenth."""
    return lambda s: warmup_cosine(
        s, steps=config.steps, warmup_steps=config.warmup_steps, final=FINAL_LR_FACTOR
    )


def sampler_meta(
    config: AIPOConfig,
    state: TrainState,
    options: TrainOptions,
    metrics: dict,
    *,
    data: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of a ``sampler`` checkpoint (``data`` = the train/val descriptions)."""
    return {
        "kind": "sampler",
        "sampler": SAMPLER_FOR_OBJECTIVE[config.objective],
        "model": "aipo-hvae",
        "config": to_dict(config),
        "image_size": config.image_size,
        "data": data or {},
        "trained_on": provenance or {},
        "metrics": metrics,
        "training": state.as_dict()
        | {
            "seed": options.seed,
            "command": options.command,
            "pretrained_vae": str(options.pretrained_vae or ""),
        },
    }


def _as_dataset(images: Any, what: str) -> Any:
    if torch.is_tensor(images):
        return TensorImages(images, source=what)
    return images


def _build_model(config: AIPOConfig, options: TrainOptions, device: torch.device) -> AIPO:
    model = AIPO(config).to(device, memory_format=torch.channels_last)  # ~1.5x faster convs on CPU
    if options.pretrained_vae is None:
        return model
    # §3.2: a trained unconditional VAE, only the partial encoder learns
    if config.objective.startswith("vae"):
        raise SamplerError("with --pretrained-vae the objective must be aipo or aipo-r (the VAE is frozen)")
    base, _ = load_model(options.pretrained_vae, str(device))
    base_arch, arch = (replace(c.arch(), grad_checkpoint=False) for c in (base.config, config))
    if base_arch != arch:
        raise SamplerError(
            f"{options.pretrained_vae}: its architecture differs from preset {config.preset!r}"
        )
    model.vae.load_state_dict(base.vae.state_dict())
    init = options.init_partial_from_encoder
    if init if init is not None else config.objective == "aipo-r":
        model.init_partial_from_encoder()
    model.freeze_vae()
    return model


def train_sampler(
    config: AIPOConfig,
    train_set: Any,
    val_set: Any,
    options: TrainOptions,
    *,
    dist: DistInfo | None = None,
    mask_fn: MaskFn | None = None,
    log: Callable[[str], None] = print,
    callbacks: list[Callable[[TrainState, dict[str, float]], None]] | None = None,
) -> tuple[AIPO, TrainState, dict[str, float]]:
    """Train ``config`` on ``train_set``, validate on the first ``val_images`` of ``val_set``.

    ``train_set``/``val_set`` are map-style datasets (``ds[i]["img"]`` ``(1, S, S)``, e.g.
    ``datasets.open_dataset(...)``) or in-memory tensors ``(N, 1, S, S)``.
    Returns the EMA model, the final training state and the last validation metrics.
    """
    dist = dist or DistInfo()
    mask_fn = mask_fn or default_masks()
    device = torch.device(options.device)
    size = config.image_size
    train_set, val_set = _as_dataset(train_set, "tensor"), _as_dataset(val_set, "tensor")
    if len(train_set) < 1:
        raise SamplerError("the training split is empty")
    first = torch.as_tensor(train_set[0]["img"])
    if tuple(first.shape) != (1, size, size):
        raise SamplerError(
            f"training images must be (N, 1, {size}, {size}) for preset {config.preset!r}, "
            f"got items of {tuple(first.shape)}"
        )
    val, _ = memory_subset(val_set, options.val_images)
    if len(val) == 0:
        raise SamplerError("the validation split is empty")

    torch.manual_seed(options.seed)
    model = _build_model(config, options, device)
    ema = EMA(model, lambda s: ema_warmup(s, config.ema_rate))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, betas=(config.adam_beta1, config.adam_beta2)
    )
    modules = {"model": model, "ema": ema.module}
    state = TrainState()
    if options.resume:
        try:
            resumed = load_resume(options.out, trains=TRAINS, device=device)
            resumed.restore(modules, {"adamw": opt})
        except CheckpointError as exc:
            raise SamplerError(f"--resume: {exc}") from exc
        now = json.loads(json.dumps(to_dict(replace(config, steps=resumed.meta["config"]["steps"]))))
        if resumed.meta.get("config") != now:
            raise SamplerError(
                f"--resume: {resumed.path} was trained with another config (only --steps may change)"
            )
        if why := resume_data_mismatch(resumed.meta.get("trained_on"), trained_on(train_set, size)):
            raise SamplerError(why)
        state = resumed.state
        log(f"resumed from {resumed.path} at step {state.step}")
    net: torch.nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, find_unused_parameters=True)

    workers = default_workers() if options.workers is None else int(options.workers)
    loader = image_loader(
        train_set,
        batch_size=config.batch_size,
        seed=options.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        start_step=state.step,
        workers=workers,
        pin_memory=device.type == "cuda",
    )

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = start
        cl = torch.channels_last
        for batch in loader:
            x = batch["img"]
            m = mask_fn(len(x), size, step_generator(options.seed, dist.rank, step, MASK_STREAM))
            yield x.to(device).contiguous(memory_format=cl), m.to(device).contiguous(memory_format=cl)
            step += 1

    val_masks = mask_fn(len(val), size, torch.Generator().manual_seed(12345))
    metrics: dict[str, float] = {}
    data = data_record(train_set, val_set)
    provenance = trained_on(train_set, size)

    def validate() -> dict[str, float]:
        ema.module.eval()
        rng = torch.get_rng_state()
        torch.manual_seed(options.seed + 12345)  # the same latent draws at every validation
        out: dict[str, list[float]] = {}
        with torch.no_grad():
            for i in range(0, len(val), 64):
                xv, mv = val[i : i + 64].to(device), val_masks[i : i + 64].to(device)
                for k, v in ema.module.losses(xv, mv, config.objective).items():
                    out.setdefault(k, []).append(float(v) * len(xv))
        torch.set_rng_state(rng)
        return {f"val_{k}": sum(v) / len(val) for k, v in out.items()}

    def save(st: TrainState) -> None:
        if not dist.is_main:
            return
        meta = sampler_meta(config, st, options, metrics, data=data, provenance=provenance)
        save_checkpoint(options.out, ema.module.tensors(), meta)
        save_resume(
            options.out,
            trains=TRAINS,
            modules=modules,
            optimizers={"adamw": opt},
            state=st,
            seed=options.seed,
            meta={"config": to_dict(config), "data": data, "trained_on": provenance},
        )

    def on_validate(st: TrainState, _stats: dict[str, float]) -> None:
        if dist.is_main:
            metrics.clear()
            metrics.update(validate())
            log(f"step {st.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    phase = Phase(
        lambda b: net(b[0], b[1], config.objective),
        opt,
        schedule=lr_schedule(config),
        grad_clip=config.grad_clip,
        skip_threshold=config.skip_threshold,
        ema=ema,
    )
    model.train()
    t0 = time.perf_counter()
    stream = batches(state.step)
    try:
        state = train(
            phase,
            stream,
            config.steps,
            state=state,
            seed=options.seed,
            callbacks=[
                Every(options.val_every, on_validate, last=config.steps),
                Every(options.ckpt_every, lambda st, _: save(st) if st.step < config.steps else None),
                *(callbacks or []),
            ],
        )
    finally:
        stream.close()  # stops the loader's workers
    if not metrics and dist.is_main:
        metrics.update(validate())
    save(state)
    log(f"trained {state.step} steps in {time.perf_counter() - t0:.0f} s ({state.skipped} skipped updates)")
    return ema.module, state, metrics
