"""Training of the AIPO / AIPO-R samplers and their unconditional VAE (model code is in aipo.py).

:func:`train_sampler` drives ``boed.runtime.training.train`` (gradient clipping, update skipping
above a threshold with the count logged, the all-skipped guard, EMA of the weights): batches of
in-memory images, masks from the AIPO mask distribution (``datasets.masks.aipo_masks``: 0–5
squares of side 35 %, §4 of 001_acb47c175b470c6b.txt), a linear warm-up then cosine decay of the
learning rate to a tenth, periodic validation of the EMA weights, and two checkpoints:

* ``OUT`` (kind ``sampler``): the EMA weights only, what :func:`generative.registry.build_sampler`
  loads; the JSON holds the resolved config, the data description, validation metrics and the
  training state.
* ``OUT.train`` (kind ``sampler-train``): raw weights, EMA, Adam state and progress, for ``--resume``.

Runs under ``torchrun``: each rank draws its own batches (seed + rank), gradients are averaged by
DDP, rank 0 validates and writes the checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from boed.config import to_dict
from boed.runtime.checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from boed.runtime.devices import DistInfo
from boed.runtime.training import EMA, TrainState, train
from generative.aipo import AIPO
from generative.checkpoint import load_model
from generative.config import AIPOConfig
from generative.errors import SamplerError

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
    """How to run (not what the model is): paths, seeds, cadence."""

    out: Path
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    pretrained_vae: Path | None = None
    init_partial_from_encoder: bool | None = None  # None: the paper's choice (yes for AIPO-R only)
    val_every: int = 250
    ckpt_every: int = 250
    val_images: int = 128
    data: dict[str, Any] = field(default_factory=dict)
    command: str = ""


def train_state_path(out: Path) -> Path:
    return Path(str(checkpoint_paths(out)[0].with_suffix("")) + ".train")


def default_masks() -> MaskFn:
    from datasets.masks import aipo_masks

    return aipo_masks


def lr_at(config: AIPOConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to a tenth at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    frac = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def ema_decay_at(config: AIPOConfig, step: int) -> float:
    """EMA decay with a warm-up, min(rate, (1 + t) / (10 + t)): early checkpoints are not the init."""
    return min(config.ema_rate, (1.0 + step) / (10.0 + step))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": groups})


def sampler_meta(
    config: AIPOConfig, state: TrainState, options: TrainOptions, metrics: dict
) -> dict[str, Any]:
    return {
        "kind": "sampler",
        "sampler": SAMPLER_FOR_OBJECTIVE[config.objective],
        "model": "aipo-hvae",
        "config": to_dict(config),
        "image_size": config.image_size,
        "data": options.data,
        "metrics": metrics,
        "training": state.as_dict()
        | {
            "seed": options.seed,
            "command": options.command,
            "pretrained_vae": str(options.pretrained_vae or ""),
        },
    }


def train_sampler(
    config: AIPOConfig,
    images: torch.Tensor,
    val: torch.Tensor,
    options: TrainOptions,
    *,
    dist: DistInfo | None = None,
    mask_fn: MaskFn | None = None,
    log: Callable[[str], None] = print,
    callbacks: list[Callable[[TrainState, dict[str, float]], None]] | None = None,
) -> tuple[AIPO, TrainState, dict[str, float]]:
    """Train ``config`` on ``images`` ``(N, 1, S, S)``, validate on ``val``.

    Returns the EMA model, the final training state and the last validation metrics.
    """
    dist = dist or DistInfo()
    mask_fn = mask_fn or default_masks()
    device = torch.device(options.device)
    size = config.image_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
        raise SamplerError(
            f"training images must be (N, 1, {size}, {size}) for preset {config.preset!r}, "
            f"got {tuple(images.shape)}"
        )
    torch.manual_seed(options.seed + dist.rank)
    model = AIPO(config).to(device, memory_format=torch.channels_last)  # ~1.5x faster convs on CPU
    state = TrainState()
    opt_blob: tuple[dict, list] | None = None
    pretrained = options.pretrained_vae is not None
    if pretrained:  # §3.2: a trained unconditional VAE, only the partial encoder learns
        base, meta = load_model(options.pretrained_vae, options.device)
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
        if config.objective.startswith("vae"):
            raise SamplerError(
                "with --pretrained-vae the objective must be aipo or aipo-r (the VAE is frozen)"
            )
    ema = EMA(model, ema_decay_at(config, state.step))
    if options.resume:
        path = train_state_path(options.out)
        ckpt = load_checkpoint(path, kind="sampler-train", device=options.device)
        model.load_state_dict({k[6:]: v for k, v in ckpt.tensors.items() if k.startswith("model.")})
        ema.module.load_state_dict({k[4:]: v for k, v in ckpt.tensors.items() if k.startswith("ema.")})
        st = ckpt.meta["state"]
        state = TrainState(
            step=st["step"], skipped=st["skipped"], images_seen=st["images_seen"], seconds=st["seconds"]
        )
        opt_blob = ({k: v for k, v in ckpt.tensors.items() if k.startswith("optim.")}, ckpt.meta["optimizer"])
        log(f"resumed from {path} at step {state.step}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=lr_at(config, state.step),
        weight_decay=config.weight_decay,
        betas=(config.adam_beta1, config.adam_beta2),
    )
    if opt_blob is not None:
        _load_optimizer(opt, *opt_blob)
    net: torch.nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, find_unused_parameters=True)

    gen = torch.Generator().manual_seed(options.seed * 1000 + dist.rank + 1 + state.step)
    images = images.contiguous()

    def batches():
        while True:
            idx = torch.randint(len(images), (config.batch_size,), generator=gen)
            x = images[idx]
            m = mask_fn(config.batch_size, size, gen)
            cl = torch.channels_last
            yield x.to(device).contiguous(memory_format=cl), m.to(device).contiguous(memory_format=cl)

    vgen = torch.Generator().manual_seed(12345)
    val = val[: options.val_images]
    val_masks = mask_fn(len(val), size, vgen)
    metrics: dict[str, float] = {}

    def validate() -> dict[str, float]:
        ema.module.eval()
        with torch.no_grad():
            out: dict[str, list[float]] = {}
            for i in range(0, len(val), 64):
                stats = ema.module.losses(
                    val[i : i + 64].to(device), val_masks[i : i + 64].to(device), config.objective
                )
                for k, v in stats.items():
                    out.setdefault(k, []).append(float(v) * len(val[i : i + 64]))
        return {f"val_{k}": sum(v) / len(val) for k, v in out.items()}

    def save(final: bool = False) -> None:
        if not dist.is_main:
            return
        save_checkpoint(options.out, ema.module.tensors(), sampler_meta(config, state, options, metrics))
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in ema.module.state_dict().items()}
        opt_tensors, groups = _optimizer_tensors(opt)
        meta = {
            "kind": "sampler-train",
            "config": to_dict(config),
            "state": state.as_dict(),
            "optimizer": groups,
        }
        save_checkpoint(train_state_path(options.out), tensors | opt_tensors, meta)

    def on_step(st: TrainState, stats: dict[str, float]) -> None:
        for g in opt.param_groups:
            g["lr"] = lr_at(config, st.step)
        ema.decay = ema_decay_at(config, st.step)
        if dist.is_main and (st.step % options.val_every == 0 or st.step == config.steps):
            metrics.clear()
            metrics.update(validate())
            log(f"step {st.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if st.step % options.ckpt_every == 0 and st.step < config.steps:
            save()

    model.train()
    t0 = time.perf_counter()
    state = train(
        lambda b: net(b[0], b[1], config.objective),
        params,
        opt,
        batches(),
        config.steps,
        state=state,
        grad_clip=config.grad_clip,
        skip_threshold=config.skip_threshold,
        ema=ema,
        ema_model=model,
        callbacks=[on_step, *(callbacks or [])],
    )
    if not metrics and dist.is_main:
        metrics.update(validate())
    save(final=True)
    log(f"trained {state.step} steps in {time.perf_counter() - t0:.0f} s ({state.skipped} skipped updates)")
    return ema.module, state, metrics
