"""The one trainer of every sampler: a family (generative.family) on :mod:`boed.runtime.training`.

:func:`train_generative` trains any :class:`~generative.family.SamplerFamily` the same way:

* the streaming data path of :mod:`boed.runtime.data` (DataLoader workers decode and resize images
  one by one, a seeded epoch order, one shard per rank); each step's batch is ``(x, mask)`` with
  masks from the family's distribution (default: the AIPO masks, 0–5 squares of side 35 %, §4 of
  Harvey et al., "Image Completion via Inference in Deep Generative Models", 2021), drawn for the
  whole global batch from a generator seeded by ``(seed, step)``, each rank taking its slice
  (:func:`boed.runtime.data.global_batch_draw`), so the masks do not depend on the number of ranks;
* the family's phases (one per optimiser: a GAN's critic and generator, say), with their
  schedules, gradient clipping, DDP-safe skipping of bad updates and the all-skipped guard of
  :func:`boed.runtime.training.train`; an EMA of the weights when the family asks for one;
* validation of the EMA (else raw) weights on an in-memory subset of ``val_images`` validation
  images with fixed masks and fixed random draws, every ``val_every`` steps and at the end, then
  the family's ``on_validate`` hook (sample grids);
* two checkpoints: ``OUT`` (kind ``sampler``): the EMA (else raw) weights, what
  :func:`generative.registry.build_sampler` loads, its JSON holding the resolved config, the data
  description (``data``), provenance (``trained_on``), validation metrics and the training state;
  and ``OUT.train`` (kind ``train-state``, :mod:`boed.runtime.resume`): raw weights, EMA, every
  optimiser's state and progress, for ``--resume`` (bit-exact: the run continues as if never
  stopped; only ``steps`` may change);
* ``torchrun``: each rank reads its own shard, gradients are averaged by DDP, rank 0 validates and
  writes the checkpoints.

:func:`train_sampler` is the AIPO entry point (the family of generative/aipo.py, the sampler name
given by the config's objective).
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
from boed.runtime.data import TensorImages, default_workers, global_batch_draw, image_loader, memory_subset
from boed.runtime.devices import DistInfo
from boed.runtime.provenance import data_record, resume_data_mismatch, trained_on
from boed.runtime.resume import load_resume, resume_path, save_resume
from boed.runtime.training import EMA, TrainState, train
from boed.runtime.training import Every as Every
from generative.errors import SamplerError
from generative.family import MaskFn, SamplerFamily, checkpoint_meta, model_tensors

TRAINS = "sampler"
MASK_STREAM = 1
VAL_SEED = 12345  # fixed validation masks and draws: every validation sees the same inputs


@dataclass
class TrainOptions:
    """How to run (not what the model is): paths, seeds, cadence, loader workers.

    ``pretrained_vae`` / ``init_partial_from_encoder`` are the AIPO family's pretrained mode
    (§3.2 of Harvey et al.); other families refuse them. ``init`` is a warm start: a checkpoint of
    the same family and architecture whose weights the run starts from (the optimiser starts
    fresh); the written checkpoint records it as ``training.init`` (path, sha256, its data).
    """

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
    init: Path | None = None  # warm start from this checkpoint's weights (see the docstring)


def train_state_path(out: Path) -> Path:
    """The resume pair's stem, ``OUT.train`` (:func:`boed.runtime.resume.resume_path`)."""
    return resume_path(out)


def sampler_meta(
    family: SamplerFamily,
    name: str,
    config: Any,
    state: TrainState,
    options: TrainOptions,
    metrics: dict,
    *,
    data: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    init_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of a ``sampler`` checkpoint (``data`` = the train/val descriptions; ``init_record``
    the warm start's path, sha256 and data, see :func:`warm_start`)."""
    training = state.as_dict() | {"seed": options.seed, "command": options.command}
    if options.pretrained_vae is not None:
        training["pretrained_vae"] = str(options.pretrained_vae)
    if init_record is not None:
        training["init"] = init_record
    return checkpoint_meta(
        family,
        config,
        name,
        data=data or {},
        trained_on=provenance or {},
        metrics=metrics,
        training=training,
    )


def warm_start(family: SamplerFamily, model: torch.nn.Module, init: Path | str) -> dict[str, Any]:
    """Load the weights of sampler checkpoint ``init`` (same family, same architecture) into ``model``.

    Returns ``{"path", "sha256", "trained_on"}`` of ``init`` for the new checkpoint's metadata.
    Raises one :class:`SamplerError` line naming the file when it does not load or does not fit.
    """
    from generative.family import architecture_mismatch, load_family_model

    try:
        source, meta = load_family_model(init, family)
    except CheckpointError as exc:
        raise SamplerError(f"--init {init}: {exc}") from exc
    tensors = source.state_dict()
    mismatch = architecture_mismatch(model.state_dict(), tensors)
    if mismatch:
        raise SamplerError(f"--init {init}: weights do not fit the run's config: {mismatch}")
    model.load_state_dict(tensors)
    return {"path": str(init), "sha256": meta.get("sha256"), "trained_on": meta.get("trained_on")}


def _as_dataset(images: Any, what: str) -> Any:
    if torch.is_tensor(images):
        return TensorImages(images, source=what)
    return images


def _check_data(train_set: Any, val_set: Any, config: Any, val_images: int) -> torch.Tensor:
    size = config.image_size
    if len(train_set) < 1:
        raise SamplerError("the training split is empty")
    first = torch.as_tensor(train_set[0]["img"])
    if tuple(first.shape) != (1, size, size):
        raise SamplerError(
            f"training images must be (N, 1, {size}, {size}) for preset {config.preset!r}, "
            f"got items of {tuple(first.shape)}"
        )
    val, _ = memory_subset(val_set, val_images)
    if len(val) == 0:
        raise SamplerError("the validation split is empty")
    return val


def _check_resume(resumed: Any, config: Any, train_set: Any) -> None:
    now = json.loads(json.dumps(to_dict(replace(config, steps=resumed.meta["config"]["steps"]))))
    if resumed.meta.get("config") != now:
        raise SamplerError(
            f"--resume: {resumed.path} was trained with another config (only --steps may change)"
        )
    if why := resume_data_mismatch(resumed.meta.get("trained_on"), trained_on(train_set, config.image_size)):
        raise SamplerError(why)


def train_generative(
    family: SamplerFamily,
    name: str,
    config: Any,
    train_set: Any,
    val_set: Any,
    options: TrainOptions,
    *,
    dist: DistInfo | None = None,
    mask_fn: MaskFn | None = None,
    log: Callable[[str], None] = print,
    callbacks: list[Callable[[TrainState, dict[str, float]], None]] | None = None,
) -> tuple[torch.nn.Module, TrainState, dict[str, float]]:
    """Train sampler ``name`` of ``family`` with ``config`` on ``train_set``; see the module docstring.

    ``train_set``/``val_set`` are map-style datasets (``ds[i]["img"]`` ``(1, S, S)``, e.g.
    ``datasets.open_dataset(...)``) or in-memory tensors ``(N, 1, S, S)``.
    Returns the trained (EMA, when the family uses one) model, the final state and the last
    validation metrics.
    """
    if name not in family.names:
        raise SamplerError(f"{family.model_id} trains {', '.join(family.names)}, not {name!r}")
    dist = dist or DistInfo()
    mask_fn = mask_fn or family.masks(config)
    device = torch.device(options.device)
    size = config.image_size
    train_set, val_set = _as_dataset(train_set, "tensor"), _as_dataset(val_set, "tensor")
    val = _check_data(train_set, val_set, config, options.val_images)

    torch.manual_seed(options.seed)
    model = family.build_model(config, options)
    init_record = None
    if options.init is not None and not options.resume:
        init_record = warm_start(family, model, options.init)
        log(f"warm start from {options.init} (sha256 {str(init_record['sha256'])[:12]}…)")
    model = model.to(device)
    decay = family.ema_decay(config)
    ema = EMA(model, decay) if decay is not None else None
    net: torch.nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, find_unused_parameters=True)
    phases = family.phases(model, net, config, ema)
    optimizers = {p.name: p.optimizer for p in phases}
    if len(optimizers) != len(phases):
        raise SamplerError(f"{family.model_id}: phase names must be unique, got {[p.name for p in phases]}")
    modules = {"model": model} | ({"ema": ema.module} if ema is not None else {})
    state = TrainState()
    if options.resume:
        try:
            resumed = load_resume(options.out, trains=TRAINS, device=device)
            resumed.restore(modules, optimizers)
        except CheckpointError as exc:
            raise SamplerError(f"--resume: {exc}") from exc
        _check_resume(resumed, config, train_set)
        state = resumed.state
        init_record = resumed.meta.get("init")
        log(f"resumed from {resumed.path} at step {state.step}")

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
    channels_last = torch.channels_last
    ranks = (dist.rank, dist.world_size)

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        step = start
        for batch in loader:
            x = batch["img"]
            m = global_batch_draw(  # this rank's slice of the masks of the whole global batch
                lambda n, g: mask_fn(n, size, g), len(x), options.seed, step, MASK_STREAM, *ranks
            )
            yield (
                x.to(device).contiguous(memory_format=channels_last),
                m.to(device).contiguous(memory_format=channels_last),
            )
            step += 1

    val_masks = mask_fn(len(val), size, torch.Generator().manual_seed(VAL_SEED))
    metrics: dict[str, float] = {}
    data = data_record(train_set, val_set)
    provenance = trained_on(train_set, size)
    evaluated = lambda: ema.module if ema is not None else model  # noqa: E731

    def validate() -> dict[str, float]:
        module = evaluated()
        was_training = module.training
        module.eval()
        rng = torch.get_rng_state()
        torch.manual_seed(options.seed + VAL_SEED)  # the same random draws at every validation
        sums: dict[str, float] = {}
        with torch.no_grad():
            for i in range(0, len(val), 64):
                xv, mv = val[i : i + 64].to(device), val_masks[i : i + 64].to(device)
                for k, v in family.validate(module, xv, mv).items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(xv)
        torch.set_rng_state(rng)
        module.train(was_training)
        return {f"val_{k}": v / len(val) for k, v in sums.items()}

    def save(st: TrainState) -> None:
        if not dist.is_main:
            return
        meta = sampler_meta(
            family,
            name,
            config,
            st,
            options,
            metrics,
            data=data,
            provenance=provenance,
            init_record=init_record,
        )
        save_checkpoint(options.out, model_tensors(evaluated()), meta)
        save_resume(
            options.out,
            trains=TRAINS,
            modules=modules,
            optimizers=optimizers,
            state=st,
            seed=options.seed,
            meta={"config": to_dict(config), "data": data, "trained_on": provenance, "init": init_record},
        )

    def on_validate(st: TrainState, _stats: dict[str, float]) -> None:
        if dist.is_main:
            metrics.clear()
            metrics.update(validate())
            log(f"step {st.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            rng = torch.get_rng_state()
            torch.manual_seed(options.seed + VAL_SEED)
            with torch.no_grad():
                family.on_validate(
                    evaluated(), val[:8].to(device), val_masks[:8].to(device), options.out, st.step
                )
            torch.set_rng_state(rng)

    model.train()
    t0 = time.perf_counter()
    stream = batches(state.step)
    try:
        state = train(
            phases,
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
    return evaluated(), state, metrics


def train_sampler(
    config: Any,
    train_set: Any,
    val_set: Any,
    options: TrainOptions,
    **kwargs: Any,
) -> tuple[torch.nn.Module, TrainState, dict[str, float]]:
    """Train an AIPO / AIPO-R sampler or its VAE (the name follows ``config.objective``)."""
    from generative.aipo import FAMILY, SAMPLER_FOR_OBJECTIVE

    return train_generative(
        FAMILY, SAMPLER_FOR_OBJECTIVE[config.objective], config, train_set, val_set, options, **kwargs
    )
