"""One training run on the shared trainer and data path, for the DDP equality test (test_ddp.py).

``run(out, world_size, rank)`` trains a small convolutional inpainting net (no BatchNorm: batch
statistics are per rank under DDP, see docs/scaling.md) with AdamW, warm-up + cosine, clipping and
an EMA, on 48 seeded random 8x8 images with random masks, global batch 8 (``8 // world_size`` per
rank): 3 steps, a resume file, then fresh model, optimiser and EMA objects restored from it and 3
more steps. Returns the final weights and EMA weights as lists (rank 0 writes them to
``out.<world_size>.json`` when run as a script under torchrun's variables)::

    WORLD_SIZE=2 RANK=r ... python -m tests.boed.runtime.ddp_equal OUT [shared|sampler]

``run_sampler(out, dist)`` does the same through the sampler trainer
(``generative.training.train_generative``) with the tiny ``pixelcnn-local`` family (a likelihood
loss: no noise and no BatchNorm), 2 steps, then ``resume`` to 4; rank 0 writes the checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

from boed.runtime.data import TensorImages, endless, global_batch_draw, image_loader
from boed.runtime.resume import load_resume, save_resume
from boed.runtime.schedule import warmup_cosine
from boed.runtime.training import EMA, Phase, train

GLOBAL_BATCH, STEPS, SEED = 8, 6, 11


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 1, 3, padding=1))


def _masks(n: int, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, 1, 8, 8, generator=g) < 0.5).float()


def _parts(world_size: int):
    model = _net()
    net = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.01)
    ema = EMA(model, 0.8)
    return model, net, opt, ema


def _segment(parts, data, start: int, stop: int, rank: int, world_size: int, state=None):
    model, net, opt, ema = parts
    per_rank = GLOBAL_BATCH // world_size
    loader = image_loader(
        data, batch_size=per_rank, seed=SEED, rank=rank, world_size=world_size, start_step=start
    )
    step = {"i": start}

    def loss_fn(batch):
        x = batch["img"]
        m = global_batch_draw(_masks, len(x), SEED, step["i"], 7, rank, world_size)
        step["i"] += 1
        y = net(torch.cat([x * m, m], dim=1))
        return {"loss": (((y - x) * (1 - m)) ** 2).mean()}

    schedule = lambda s: warmup_cosine(s, steps=STEPS, warmup_steps=2, final=0.1)  # noqa: E731
    phase = Phase(loss_fn, opt, schedule=schedule, grad_clip=0.5, ema=ema)
    images = lambda batch: len(batch["img"])  # noqa: E731 - the default counts the first value, "idx"
    return train(phase, endless(loader), stop, state=state, seed=SEED, batch_size=images)


def run(out: str, world_size: int = 1, rank: int = 0) -> dict:
    g = torch.Generator().manual_seed(5)
    data = TensorImages(torch.rand(48, 1, 8, 8, generator=g))
    parts = _parts(world_size)
    state = _segment(parts, data, 0, STEPS // 2, rank, world_size)
    model, _net_, opt, ema = parts
    if rank == 0:
        save_resume(out, trains="ddp-test", modules={"model": model, "ema": ema.module},
                    optimizers={"main": opt}, state=state, seed=SEED)  # fmt: skip
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    fresh = _parts(world_size)  # new objects: everything comes back from the resume file
    resume = load_resume(out, trains="ddp-test")
    resume.restore({"model": fresh[0], "ema": fresh[3].module}, {"main": fresh[2]})
    state = _segment(fresh, data, resume.state.step, STEPS, rank, world_size, state=resume.state)
    return {
        "step": state.step,
        "images_seen": state.images_seen,
        "weights": [p.detach().flatten().tolist() for p in fresh[0].parameters()],
        "ema": [p.detach().flatten().tolist() for p in fresh[3].module.parameters()],
    }


def run_sampler(out: str, dist=None) -> None:
    """Train the tiny pixelcnn-local sampler 2 steps, then resume it to 4 (global batch 8)."""
    from pathlib import Path

    from boed.runtime.devices import DistInfo
    from generative.pixelcnn_local import FAMILY
    from generative.training import TrainOptions, train_generative

    dist = dist or DistInfo()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(32, 1, 32, 32, generator=g)
    for steps, resume in ((2, False), (4, True)):
        config = FAMILY.config("tiny", steps=steps, batch_size=GLOBAL_BATCH // dist.world_size, lr=3e-3)
        options = TrainOptions(out=Path(out), seed=SEED, resume=resume, val_every=100, ckpt_every=100,
                               val_images=4, workers=0)  # fmt: skip
        train_generative(
            FAMILY, "pixelcnn-local", config, images, images[:4], options, dist=dist, log=lambda _: None
        )


if __name__ == "__main__":
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if sys.argv[2:] == ["sampler"]:
        from boed.runtime.devices import DistInfo

        run_sampler(sys.argv[1], DistInfo(dist.get_rank(), dist.get_world_size(), dist.get_rank()))
    else:
        result = run(sys.argv[1], dist.get_world_size(), dist.get_rank())
        with open(sys.argv[1] + f".{dist.get_rank()}.json", "w") as fh:
            json.dump(result | {"world_size": int(os.environ["WORLD_SIZE"])}, fh)
    dist.destroy_process_group()
