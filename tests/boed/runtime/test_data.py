"""The streaming data path: seeded epoch order, per-rank shards, resume in mid-epoch, workers."""

import pytest
import torch

from boed.runtime.data import (
    EpochBatches,
    TensorImages,
    block_size,
    image_loader,
    memory_subset,
    step_generator,
    step_seed,
)


def _take(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_each_epoch_visits_every_item_once_in_a_new_order():
    s = EpochBatches(20, 5, seed=0)
    batches = _take(s, 8)  # two epochs of 4 batches
    e0, e1 = sum(batches[:4], []), sum(batches[4:], [])
    assert sorted(e0) == list(range(20)) == sorted(e1)
    assert e0 != e1 and e0 != list(range(20))


def test_order_depends_on_the_seed_only():
    assert _take(EpochBatches(30, 4, seed=1), 10) == _take(EpochBatches(30, 4, seed=1), 10)
    assert _take(EpochBatches(30, 4, seed=1), 10) != _take(EpochBatches(30, 4, seed=2), 10)


def test_start_step_continues_in_mid_epoch_exactly():
    full = _take(EpochBatches(23, 4, seed=5), 12)  # 5 batches per epoch, a partial batch dropped
    assert _take(EpochBatches(23, 4, seed=5, start_step=7), 5) == full[7:]
    assert EpochBatches(23, 4, seed=5).batch(7) == full[7]


@pytest.mark.parametrize("n,world", [(20, 2), (21, 2), (10, 3)])
def test_rank_shards_are_disjoint_and_cover_the_epoch(n, world):
    shards = [EpochBatches(n, 2, seed=0, rank=r, world_size=world) for r in range(world)]
    per_epoch = shards[0].per_epoch
    epoch = [sum(_take(s, per_epoch), []) for s in shards]
    together = sum(epoch, [])
    # every item is seen; only the padding (< world items) repeats, as in DistributedSampler
    assert set(together) == set(range(n)) or len(together) < n
    assert len(together) - len(set(together)) < world
    assert all(len(e) == len(epoch[0]) for e in epoch)


def test_block_shuffle_keeps_blocks_together():
    s = EpochBatches(64 * 4, 64, seed=0, block=64)
    for batch in _take(s, 8):
        assert len({i // 64 for i in batch}) == 1  # one block per batch: each block rendered once
    assert sorted(sum(_take(s, 4), [])) == list(range(256))
    orders = [[b[0] // 64 for b in _take(EpochBatches(256, 64, seed=k, block=64), 4)] for k in range(5)]
    assert any(o != [0, 1, 2, 3] for o in orders)  # the blocks are shuffled
    assert all(b != sorted(b) for b in _take(s, 4))  # and the items inside each block


def test_phantoms_declare_their_block():
    from datasets import open_dataset
    from datasets.phantoms import BLOCK

    assert block_size(open_dataset("phantoms", split="val", n=8, size=16)) == BLOCK
    assert block_size(TensorImages(torch.zeros(3, 1, 4, 4))) == 1


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        EpochBatches(0, 4, seed=0)


def test_batch_size_is_capped_by_the_shard():
    assert EpochBatches(6, 32, seed=0).batch_size == 6
    assert EpochBatches(6, 32, seed=0, world_size=2).batch_size == 3


def _images(n=12, size=4):
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, size, size).clone()
    return TensorImages(x, torch.arange(n, dtype=torch.float32)[:, None], source="test")


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_the_sampler_order_with_and_without_workers(workers):
    ds = _images()
    loader = image_loader(ds, batch_size=4, seed=3, workers=workers)
    it = iter(loader)
    got = [next(it) for _ in range(5)]
    want = _take(EpochBatches(12, 4, seed=3), 5)
    for batch, idx in zip(got, want, strict=True):
        assert batch["img"].shape == (4, 1, 4, 4) and batch["lab"].shape == (4, 1)
        assert batch["img"][:, 0, 0, 0].long().tolist() == idx == batch["lab"][:, 0].long().tolist()
        assert batch["idx"] == [f"test-{i}" for i in idx]
    del it


def test_memory_subset_is_bounded():
    x, y = memory_subset(_images(), 5)
    assert x.shape == (5, 1, 4, 4) and y.shape == (5, 1)
    assert memory_subset(_images(), None)[0].shape[0] == 12


def test_step_seeds_differ_by_rank_step_and_stream():
    seeds = {step_seed(0, r, s, k) for r in range(2) for s in range(3) for k in range(2)}
    assert len(seeds) == 12 and step_seed(0, 1, 2, 0) == step_seed(0, 1, 2, 0)
    assert torch.equal(
        torch.rand(3, generator=step_generator(0, 0, 5)), torch.rand(3, generator=step_generator(0, 0, 5))
    )


class _BadItem(TensorImages):
    def __getitem__(self, i):
        if i == 3:
            from datasets.errors import DatasetError

            raise DatasetError("unreadable or corrupt image (image file is truncated)", "/data/x3.png")
        return super().__getitem__(i)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_item_error_comes_back_as_one_line(workers):
    from datasets.errors import DatasetError

    loader = image_loader(_BadItem(torch.zeros(8, 1, 2, 2)), batch_size=8, seed=0, workers=workers)
    with pytest.raises(DatasetError) as info:
        next(iter(loader))
    assert str(info.value) == "/data/x3.png: unreadable or corrupt image (image file is truncated)"
