"""Procedural frontal chest radiograph phantoms with localized findings: generation and dataset.

The embedded default behind ``--images chestxray``: no download, any square size, deterministic
for a seed. The anatomy and its rendering live in :mod:`datasets.phantom_anatomy`, the 14
findings in :mod:`datasets.phantom_findings`; this module draws blocks of phantoms
(:func:`phantom_block`, :func:`generate_phantoms`) and serves them as :class:`PhantomDataset`.
Labels are fully known (0/1, no NaN).

Images are generated in blocks of 64 whose seeds derive from ``(seed, block)``: image ``i`` of a
seed is the same whatever ``n`` is, and the same patient (up to pixel noise) at any ``size``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch

from datasets.base import SPLITS, ImageDataset, check_split, phantom_fingerprint
from datasets.errors import DatasetError
from datasets.labels import LABELS
from datasets.phantom_anatomy import AnatomyMixin
from datasets.phantom_findings import FINDING_WEIGHTS, Finding, FindingsMixin

__all__ = [
    "FINDING_WEIGHTS",
    "Finding",
    "PhantomBatch",
    "PhantomDataset",
    "generate_phantoms",
    "phantom_block",
]

BLOCK = 64  # images per seeded block


class PhantomBatch(NamedTuple):
    """``images`` ``(n, 1, S, S)`` float32 in [0, 1]; ``labels`` ``(n, 15)`` float32 (0/1, no NaN);
    ``findings`` one list of :class:`Finding` per image."""

    images: torch.Tensor
    labels: torch.Tensor
    findings: list[list[Finding]]


def generate_phantoms(n: int, size: int = 64, seed: int = 0, prevalence: float = 0.5) -> PhantomBatch:
    """Generate ``n`` chest radiograph phantoms of ``size`` x ``size`` pixels.

    Args:
        n: number of images.
        size: side in pixels (any size >= 16; 64 and 256 are the presets').
        seed: images depend only on ``(seed, index)`` (and ``size`` through resolution and noise).
        prevalence: probability that an image has at least one finding (label ``Any``).

    Returns:
        :class:`PhantomBatch` with images ``(n, 1, size, size)``, labels ``(n, 15)`` in
        :data:`datasets.labels.LABELS` order and the findings with their bboxes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    images, labels, findings = [], [], []
    for block in range(math.ceil(n / BLOCK)):
        m = min(BLOCK, n - block * BLOCK)
        img, lab, fnd = phantom_block(block, size, seed, prevalence, m)
        images.append(img)
        labels.append(lab)
        findings.extend(fnd)
    if not images:
        return PhantomBatch(torch.zeros(0, 1, size, size), torch.zeros(0, len(LABELS)), [])
    return PhantomBatch(torch.cat(images), torch.cat(labels), findings)


def phantom_block(block: int, size: int, seed: int, prevalence: float, m: int = BLOCK) -> PhantomBatch:
    """The first ``m`` images of block ``block`` (images ``block * BLOCK ...``) of a seed."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, block, 0x70A7])
    gen = torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    with torch.inference_mode(), _single_thread(size):
        block_params = _Phantoms(BLOCK, size, gen, prevalence)
        # a few images at a time when large: 16 of 256 x 256 fit the caches better (2x faster than 64)
        step = max(1, (2**20) // (size * size))
        images, labels, findings = [], [], []
        for start in range(0, m, step):
            img, lab, fnd = block_params.select(start, min(m, start + step)).render()
            images.append(img)
            labels.append(lab)
            findings.extend(fnd)
    return PhantomBatch(torch.cat(images).clone(), torch.cat(labels).clone(), findings)


@contextmanager
def _single_thread(size: int):
    """Render small images on one thread: the ops are too small to share, and on a busy machine
    intra-op threads only wait for each other (1,000 phantoms: 5 s on one thread, 60 s on two
    contended threads). Large images keep torch's setting."""
    before = torch.get_num_threads()
    if size > 128 or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PhantomDataset(ImageDataset):
    """Phantoms as an :class:`~datasets.base.ImageDataset`; images are generated lazily by block.

    Splits and provenance: every ``(seed, split)`` pair is its own generator stream (a 63-bit seed
    derived from both), so no two pairs share an image: val and test are held out from train under
    the same seed *and* under any other seed (the test split of seed 1 is not the train split of
    seed 0). The run's ``seed`` picks which phantoms; there is no split seed (``describe()`` says
    ``split_seed: None``; open_dataset's ``split_seed`` does not apply). Image ``i`` of a stream is
    the same for any ``n``, so a checkpoint trained on ``n`` phantoms of a split has seen the first
    ``n`` of any larger set of that split and seed: the fingerprint is the generator version plus
    the seed, and :func:`datasets.provenance.training_overlap` compares it with the split.
    Nothing is cached on disk; up to ``cache_blocks`` blocks stay in memory.
    """

    GENERATOR = "datasets.phantoms v1"

    DEFAULT_N = {"train": 2000, "val": 500, "test": 500, "all": 3000}

    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        n: int | None = None,
        seed: int = 0,
        prevalence: float = 0.5,
        cache_blocks: int = 4,
    ):
        self.split = check_split(split)
        if split == "all":
            raise DatasetError("phantoms have no 'all' split; use train, val or test")
        self.size, self.seed, self.prevalence = int(size), int(seed), float(prevalence)
        if self.size < 16:
            raise DatasetError(f"size must be >= 16, got {size}")
        if not 0.0 <= self.prevalence <= 1.0:
            raise DatasetError(f"prevalence must be in [0, 1], got {prevalence}")
        self.n = self.DEFAULT_N[split] if n is None else int(n)
        if self.n < 0:
            raise DatasetError(f"n must be >= 0, got {n}")
        # disjoint seeds per split: a 63-bit seed from (seed, split)
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, SPLITS.index(split), 0x5E1D])
        self.stream_seed = int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))
        self.labels = LABELS
        self.ids = [f"phantom-{split}-{i:06d}" for i in range(self.n)]
        self.skipped = []
        self._cache: dict[int, PhantomBatch] = {}
        self._last_block, self._jumps = -1, 0  # access pattern: sequential or random
        self._cache_blocks = max(1, cache_blocks)

    def block(self, b: int) -> PhantomBatch:
        if b not in self._cache:
            if len(self._cache) >= self._cache_blocks:
                self._cache.pop(next(iter(self._cache)))
            m = min(BLOCK, self.n - b * BLOCK)
            self._cache[b] = phantom_block(b, self.size, self.stream_seed, self.prevalence, m)
        return self._cache[b]

    def _load(self, i: int):
        b = i // BLOCK
        if getattr(self, "_all", None) is None and b not in self._cache and b != self._last_block + 1:
            self._jumps += 1
        if self._jumps >= 2 and self._small():
            # random access (a shuffling DataLoader) would regenerate a block per item: make all once
            if getattr(self, "_all", None) is None:
                self.tensors()
            return self._all[0][i].clone(), self._all[1][i].clone()
        self._last_block = b
        batch = self.block(b)
        return batch.images[i % BLOCK], batch.labels[i % BLOCK]

    def _small(self) -> bool:
        return self.n * self.size**2 <= 2**26  # 64 M pixels: 256 MB

    def findings(self, i: int) -> list[Finding]:
        """The findings (with bboxes) of image ``i``."""
        return self.block(i // BLOCK).findings[i % BLOCK]

    def tensors(self):
        """All images and labels; kept in memory (as copies) when at most 64 M pixels."""
        cached = getattr(self, "_all", None)
        if cached is None:
            batch = generate_phantoms(self.n, self.size, self.stream_seed, self.prevalence)
            cached = (batch.images, batch.labels)
            if self._small():
                self._all = cached
            else:
                return cached
        return cached[0].clone(), cached[1].clone()

    def describe(self) -> dict:
        return {
            "source": "phantoms",
            "fingerprint": phantom_fingerprint(self.GENERATOR, self.seed),
            "split": self.split,
            "split_seed": None,
            "labels": list(self.labels),
            "size": self.size,
            "n": self.n,
            "seed": self.seed,
            "prevalence": self.prevalence,
            "generator": self.GENERATOR,
        }


class _Phantoms(AnatomyMixin, FindingsMixin):
    """One block of phantoms: draws every random parameter in a fixed order, then renders."""

    def __init__(self, m: int, size: int, gen: torch.Generator, prevalence: float):
        self.m, self.S, self.g = m, size, gen
        self.edge = 0.012 + 1.2 / size  # soft edge width in body units (1 px = 2/S units)
        self.prevalence = prevalence
        self._draw_patient()
        self._draw_findings()

    def select(self, start: int, stop: int) -> _Phantoms:
        """Images ``start:stop`` of the block as a new object (every random draw happened in
        ``__init__``, so rendering a slice gives exactly those images of the whole block)."""
        part = object.__new__(type(self))
        for key, value in self.__dict__.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.m:
                value = value[start:stop]
            elif key == "fp":
                value = {name: {k: t[start:stop] for k, t in sub.items()} for name, sub in value.items()}
            elif key in ("_pts", "_maps"):
                continue
            part.__dict__[key] = value
        part.m = max(0, min(stop, self.m) - start)
        return part
