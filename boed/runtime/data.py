"""The streaming data path of every trainer: seeded epoch order, per-rank shards, DataLoader workers.

Training never materialises a split: :func:`image_loader` wraps any map-style dataset
(``ds[i] -> {"idx", "img" (1, S, S), "lab" (L,)}``, e.g. :func:`datasets.open_dataset`) in a
``torch.utils.data.DataLoader`` whose workers decode and resize item by item, so the memory held is
a few batches per worker whatever the size of the dataset.

The order is a pure function of ``(seed, step)``: epoch ``e`` is a permutation of the items seeded
by ``(seed, e)`` (the same on every rank), cut into *global* batches of ``world_size x batch_size``
items (a partial last one is dropped), and rank ``r`` takes the ``r``-th contiguous slice of each.
So the global batch of a step does not depend on the number of ranks: ``W`` ranks of batch ``b``
see exactly the items of one process with batch ``W b`` (with one rank this is the plain
``b``-batching of the permutation), and since DDP averages the ranks' gradients, they compute the
same update (``tests/boed/runtime/test_ddp.py``). :class:`EpochBatches` starts at any step, so a
resumed run continues in the middle of an epoch exactly. Sources that generate items in blocks
(the phantoms: 64 per seeded block) get a block-wise shuffle: the order of the blocks and the
order inside each block are random, the items of one block stay together, so a worker renders
each block once per epoch instead of once per item (with several ranks each rank takes a slice
of every global batch, so each rank renders the blocks its slices touch). (Phantom items are
independent draws, so batching within blocks correlates nothing.)

Per-step randomness comes from :func:`step_seed`, a function of ``(seed, rank, step, stream)``, for
the same reason; :func:`global_batch_draw` draws per-item randomness (the training masks) for the
whole global batch and hands each rank its slice, so that it too does not depend on the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for ``(seed, rank, step, stream)`` (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(step), int(stream), 0xB0ED])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_generator(seed: int, rank: int, step: int, stream: int = 1) -> torch.Generator:
    """A CPU generator seeded by :func:`step_seed` (e.g. for the masks of one step's batch)."""
    return torch.Generator().manual_seed(step_seed(seed, rank, step, stream))


def global_batch_draw(
    draw: Callable[[int, torch.Generator], torch.Tensor],
    batch_len: int,
    seed: int,
    step: int,
    stream: int,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """This rank's slice of per-item random draws made for the whole global batch of ``step``.

    ``draw(n, generator)`` returns ``(n, ...)`` (e.g. ``n`` training masks); it is called with
    ``n = world_size * batch_len`` and ``step_generator(seed, 0, step, stream)``, and rank ``r``
    gets rows ``[r batch_len, (r + 1) batch_len)``, the rows its slice of the global batch
    (:class:`EpochBatches`) has in a one-process run with batch ``world_size * batch_len``. With
    one rank this is ``draw(batch_len, step_generator(seed, 0, step, stream))``.
    """
    drawn = draw(world_size * batch_len, step_generator(seed, 0, step, stream))
    return drawn[rank * batch_len : (rank + 1) * batch_len]


def block_size(dataset: Any) -> int:
    """Items a source generates together: ``dataset.block_size`` if it says so; phantoms: their block."""
    size = getattr(dataset, "block_size", None)
    if size is None:
        try:
            from datasets.phantoms import BLOCK, PhantomDataset
        except ImportError:  # pragma: no cover - datasets is part of the project
            return 1
        size = BLOCK if isinstance(dataset, PhantomDataset) else 1
    return max(1, int(size))


class EpochBatches(torch.utils.data.Sampler):
    """Endless batches of indices of this rank's shard, from step ``start_step`` on (module docstring).

    Args:
        n: items in the dataset; batch_size: items per batch and rank (lowered to the shard size
            when the shard is smaller); seed: seeds the epoch permutations;
        rank, world_size: this process's shard; block: items kept together (see :func:`block_size`).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        block: int = 1,
    ):
        if n < 1:
            raise ValueError("the training split is empty")
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), int(world_size)
        self.block, self.start_step = max(1, int(block)), int(start_step)
        self.shard = math.ceil(self.n / self.world_size)  # items per rank and epoch (at most)
        self.batch_size = max(1, min(int(batch_size), self.shard))
        self.global_batch = self.batch_size * self.world_size
        self.per_epoch = max(1, self.n // self.global_batch)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Item indices of ``epoch``, the same on every rank (at least one global batch long)."""
        g = torch.Generator().manual_seed(step_seed(self.seed, 0, epoch, stream=0xE90C))
        if self.block == 1:
            order = torch.randperm(self.n, generator=g)
        else:
            blocks = torch.arange(self.n).split(self.block)
            order = torch.cat(
                [
                    blocks[b][torch.randperm(len(blocks[b]), generator=g)]
                    for b in torch.randperm(len(blocks), generator=g)
                ]
            )
        if self.global_batch > self.n:  # fewer items than one global batch: repeat the start
            order = torch.cat([order, order[: self.global_batch - self.n]])
        return order

    def _slice(self, order: torch.Tensor, k: int) -> list[int]:
        start = k * self.global_batch + self.rank * self.batch_size
        return order[start : start + self.batch_size].tolist()

    def batch(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        return self._slice(self.epoch_order(epoch), k)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        cached_epoch, order = -1, None
        while True:
            epoch, k = divmod(step, self.per_epoch)
            if epoch != cached_epoch:
                order, cached_epoch = self.epoch_order(epoch), epoch
            yield self._slice(order, k)
            step += 1


class _Guarded(torch.utils.data.Dataset):
    """``dataset[i]``, or ``{"error": (type, message)}`` when reading the item raised.

    A DataLoader worker re-raises an item's exception in the main process with the worker's
    whole traceback in the message; carrying the error back as data instead lets
    :class:`ImageLoader` raise it as the one-line error it was (e.g. a ``DatasetError`` naming
    the bad file).
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return self.dataset[i]
        except Exception as exc:  # noqa: BLE001 - re-raised by ImageLoader in the main process
            return {"error": (type(exc), str(exc))}


def _rebuild(error: tuple[type, str]) -> Exception:
    cls, message = error
    try:
        return cls(message)
    except Exception:  # noqa: BLE001 - an exception type that does not take one message
        return RuntimeError(f"{cls.__name__}: {message}")


class ImageLoader:
    """Iterates the DataLoader, raising an item's error (see :class:`_Guarded`) as it was."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        self.batch_sampler = loader.batch_sampler

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            if "error" in batch:
                raise _rebuild(batch["error"])
            yield batch


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"idx": [str], "img": (B, 1, S, S), "lab": (B, L)}`` from dataset items."""
    for it in items:
        if "error" in it:
            return {"error": it["error"]}
    return {
        "idx": [it["idx"] for it in items],
        "img": torch.stack([torch.as_tensor(it["img"]) for it in items]),
        "lab": torch.stack([torch.as_tensor(it["lab"]) for it in items]),
    }


def image_loader(
    dataset: Any,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> ImageLoader:
    """An endless DataLoader over ``dataset`` in the order of :class:`EpochBatches`.

    An error reading an item (say a truncated file) is raised in the caller's process as the
    dataset raised it, one line, with or without workers.
    """
    sampler = EpochBatches(
        len(dataset),
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_step=start_step,
        block=block_size(dataset),
    )
    loader = torch.utils.data.DataLoader(
        _Guarded(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_images,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,
    )
    return ImageLoader(loader)


def default_workers() -> int:
    """DataLoader workers when the caller does not say: one per spare core, at most 4."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def memory_subset(dataset: Any, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` items (all when ``None``) as ``(images (n, 1, S, S), labels (n, L))`` in memory.

    For validation sets only, which are bounded by ``n_val`` / ``val_images``.
    """
    n = len(dataset) if n is None else min(int(n), len(dataset))
    if n == 0:
        return torch.empty(0), torch.empty(0)
    items = [dataset[i] for i in range(n)]
    batch = collate_images(items)
    return batch["img"], batch["lab"]


class TensorImages(torch.utils.data.Dataset):
    """In-memory images ``(N, 1, S, S)`` (and optional labels ``(N, L)``) as a map-style dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, source: str = "tensor"):
        self.images = images
        self.lab = labels if labels is not None else torch.full((len(images), 0), float("nan"))
        self.labels: tuple[str, ...] = ()
        self.ids = [f"{source}-{i}" for i in range(len(images))]
        self.source = source
        self.size = images.shape[-1] if images.ndim == 4 else 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"idx": self.ids[i], "img": self.images[i], "lab": self.lab[i]}

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "n": len(self), "size": self.size}


def endless(loader: Iterable[Any]) -> Iterator[Any]:
    """Cycle a finite iterable forever (re-iterating it, so shuffling samplers reshuffle)."""
    while True:
        yield from loader
