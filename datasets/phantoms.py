"""Procedural frontal chest radiograph phantoms with localized findings: generation and dataset.

The embedded default behind ``--images chestxray``: no download, any square size, deterministic
for a seed. The anatomy and its rendering live in :mod:`datasets.phantom_anatomy`, the 14
findings in :mod:`datasets.phantom_findings`; this module draws blocks of phantoms
(:func:`phantom_block`, :func:`generate_phantoms`) and serves them as :class:`PhantomDataset`.
Labels are fully known (0/1, no NaN).

Images are generated in blocks of 64 whose seeds derive from ``(seed, block)``: image ``i`` of a
seed is the same whatever ``n`` is, and the same patient (up to pixel noise) at any ``size``.

Two generator versions (:data:`VERSIONS`), chosen with ``version=`` and recorded in
``describe()`` and the fingerprint:

- ``"v1"`` (``--images phantoms-v1``): the original phantoms, kept bit-identical (the version of
  the shipped checkpoints before they were retrained on v2; pass ``version="v1"`` to reproduce
  those runs). An easy task: findings are nearly saturated, heart and abdomen saturate, ribs
  are regular, findings are independent with flat weights (:data:`FINDING_WEIGHTS`), labels exact.
- ``"v2"`` (:data:`DEFAULT_VERSION`: ``--images chestxray`` without a data root, ``phantoms``,
  ``phantoms-v2``, and every function here unless ``version`` is given): graded difficulty. Each
  finding's density change is v1's times a severity drawn per image
  (:data:`~datasets.phantom_findings.V2_CONTRAST`); 30% of the lung-parenchyma findings lie
  behind the heart or in the posterior recess below the diaphragm
  (their box is that of the whole, hidden finding); nodules and masses overlap ribs as anywhere;
  wider anatomy (habitus, lung and heart size, rotation up to 8 degrees, irregular ribs, bone
  density), varied exposure with a white point above the densest tissue (no saturation), fog,
  an exposure gradient, more noise and a fine parenchymal texture; normal and enlarged hearts
  overlap in size. Labels follow ChestX-ray14 (Wang et al., CVPR 2017): each finding's share of
  the positive images and the number of findings per positive image are the dataset's
  (:data:`~datasets.phantom_findings.NIH_COUNTS`), and findings co-occur through
  :data:`~datasets.phantom_findings.V2_AFFINITY`; ``prevalence`` (P(Any)) defaults to the
  dataset's 0.4616, which makes each label's prevalence ChestX-ray14's. ``label_noise`` flips each
  finding label independently with that probability (Any follows the flipped labels); the images
  and the ``findings`` (the truth, with boxes) do not change with it.
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
from datasets.phantom_findings import (
    FINDING_WEIGHTS,
    NIH_ANY,
    Finding,
    FindingsMixin,
    FindingsV2Mixin,
)

__all__ = [
    "FINDING_WEIGHTS",
    "DEFAULT_VERSION",
    "VERSIONS",
    "Finding",
    "finding_contrast",
    "PhantomBatch",
    "PhantomDataset",
    "generate_phantoms",
    "phantom_block",
]

BLOCK = 64  # images per seeded block

VERSIONS = {"v1": "datasets.phantoms v1", "v2": "datasets.phantoms v2"}
"""Generator versions: name -> the ``generator`` string of ``describe()`` (part of the fingerprint)."""
DEFAULT_VERSION = "v2"
"""The version of ``--images phantoms`` / ``chestxray`` (no data root) and of every function here
unless ``version`` is given; the shipped checkpoints are trained on it. v1 stays reachable by name."""
DEFAULT_PREVALENCE = {"v1": 0.5, "v2": NIH_ANY}
"""P(Any) when none is given: v1's 0.5; v2: ChestX-ray14's 51,759 / 112,120."""
_SALT = {"v1": 0x70A7, "v2": 0x70A8}  # block seeds: v2 images share no random stream with v1's


def check_version(version: str) -> str:
    """``version`` if it is one of :data:`VERSIONS` (else one :class:`DatasetError` line)."""
    if version not in VERSIONS:
        raise DatasetError(f"unknown phantom version {version!r}; valid: {', '.join(VERSIONS)}")
    return version


def _check_noise(label_noise: float, version: str) -> float:
    label_noise = float(label_noise)
    if not 0.0 <= label_noise <= 0.5:
        raise DatasetError(f"label_noise must be in [0, 0.5], got {label_noise}")
    if label_noise and version == "v1":
        raise DatasetError("label_noise needs phantom version v2 (v1's labels are exact)")
    return label_noise


class PhantomBatch(NamedTuple):
    """``images`` ``(n, 1, S, S)`` float32 in [0, 1]; ``labels`` ``(n, 15)`` float32 (0/1, no NaN);
    ``findings`` one list of :class:`Finding` per image."""

    images: torch.Tensor
    labels: torch.Tensor
    findings: list[list[Finding]]


def generate_phantoms(
    n: int,
    size: int = 64,
    seed: int = 0,
    prevalence: float | None = None,
    *,
    version: str = DEFAULT_VERSION,
    label_noise: float = 0.0,
) -> PhantomBatch:
    """Generate ``n`` chest radiograph phantoms of ``size`` x ``size`` pixels.

    Args:
        n: number of images.
        size: side in pixels (any size >= 16; 64 and 256 are the presets').
        seed: images depend only on ``(seed, index)`` (and ``size`` through resolution and noise).
        prevalence: probability that an image has at least one finding (label ``Any``); default
            :data:`DEFAULT_PREVALENCE` of the version.
        version: generator version, ``"v1"`` or ``"v2"`` (see the module docstring).
        label_noise: v2: probability that each finding label is flipped (default 0).

    Returns:
        :class:`PhantomBatch` with images ``(n, 1, size, size)``, labels ``(n, 15)`` in
        :data:`datasets.labels.LABELS` order and the findings with their bboxes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    version = check_version(version)
    prevalence = DEFAULT_PREVALENCE[version] if prevalence is None else prevalence
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    label_noise = _check_noise(label_noise, version)
    images, labels, findings = [], [], []
    for block in range(math.ceil(n / BLOCK)):
        m = min(BLOCK, n - block * BLOCK)
        img, lab, fnd = phantom_block(
            block, size, seed, prevalence, m, version=version, label_noise=label_noise
        )
        images.append(img)
        labels.append(lab)
        findings.extend(fnd)
    if not images:
        return PhantomBatch(torch.zeros(0, 1, size, size), torch.zeros(0, len(LABELS)), [])
    return PhantomBatch(torch.cat(images), torch.cat(labels), findings)


def phantom_block(
    block: int,
    size: int,
    seed: int,
    prevalence: float,
    m: int = BLOCK,
    *,
    version: str = DEFAULT_VERSION,
    label_noise: float = 0.0,
) -> PhantomBatch:
    """The first ``m`` images of block ``block`` (images ``block * BLOCK ...``) of a seed."""
    with torch.inference_mode(), _single_thread(size):
        block_params = _block_params(block, size, seed, prevalence, version, label_noise)
        # a few images at a time when large: 16 of 256 x 256 fit the caches better (2x faster than 64)
        step = max(1, (2**20) // (size * size))
        images, labels, findings = [], [], []
        for start in range(0, m, step):
            img, lab, fnd = block_params.select(start, min(m, start + step)).render()
            images.append(img)
            labels.append(lab)
            findings.extend(fnd)
    return PhantomBatch(torch.cat(images).clone(), torch.cat(labels).clone(), findings)


def _block_params(block: int, size: int, seed: int, prevalence: float, version: str, label_noise: float):
    """Every random draw of block ``block`` of a seed, ready to render."""
    salt = _SALT[check_version(version)]
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, block, salt])
    gen = torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    if version == "v1":
        return _Phantoms(BLOCK, size, gen, prevalence)
    return _PhantomsV2(BLOCK, size, gen, prevalence, label_noise)


def finding_contrast(
    n: int = 256, size: int = 64, seed: int = 0, version: str = DEFAULT_VERSION, prevalence: float = 1.0
) -> dict[str, dict[str, float]]:
    """How visible each finding is: each image rendered with and without its findings (same
    patient, exposure and noise), per finding the mean absolute intensity change inside its box.

    With two findings in one image both changes count in both boxes (they rarely overlap).
    Cardiomegaly changes the heart's size, which is drawn with the patient: it shows no change
    here and is left out.

    Returns:
        ``{finding: {"mean": mean over its instances, "n": instances}}`` for the findings drawn.
    """
    out: dict[str, list[float]] = {}
    with torch.inference_mode(), _single_thread(size):
        for block in range(math.ceil(n / BLOCK)):
            m = min(BLOCK, n - block * BLOCK)
            params = _block_params(block, size, seed, prevalence, check_version(version), 0.0)
            img, _, found = params.select(0, m).render()
            clean = params.select(0, m)
            clean.present = torch.zeros_like(clean.present)
            base = clean.render()[0]
            diff = (img - base).abs()[:, 0]
            for i, fs in enumerate(found):
                for f in fs:
                    if f.name != "Cardiomegaly":
                        r0, c0, r1, c1 = f.bbox
                        out.setdefault(f.name, []).append(float(diff[i, r0:r1, c0:c1].mean()))
    return {k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in sorted(out.items())}


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

    ``version`` picks the generator (:data:`VERSIONS`); ``describe()`` records it as ``version``
    and ``generator``, and the fingerprint hashes the generator string, so v1 and v2 collections
    of one seed never pass for each other. v2 streams derive from another salt than v1's.
    ``label_noise`` (v2) is recorded in ``describe()`` but not in the fingerprint: the images are
    the same at any noise level.
    """

    GENERATOR = VERSIONS[DEFAULT_VERSION]  # the default version's (kept for code that reads the class)

    DEFAULT_N = {"train": 2000, "val": 500, "test": 500, "all": 3000}

    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        n: int | None = None,
        seed: int = 0,
        prevalence: float | None = None,
        cache_blocks: int = 4,
        *,
        version: str = DEFAULT_VERSION,
        label_noise: float = 0.0,
    ):
        self.split = check_split(split)
        if split == "all":
            raise DatasetError("phantoms have no 'all' split; use train, val or test")
        self.version = check_version(version)
        self.generator = VERSIONS[self.version]
        self.label_noise = _check_noise(label_noise, self.version)
        prevalence = DEFAULT_PREVALENCE[self.version] if prevalence is None else prevalence
        self.size, self.seed, self.prevalence = int(size), int(seed), float(prevalence)
        if self.size < 16:
            raise DatasetError(f"size must be >= 16, got {size}")
        if not 0.0 <= self.prevalence <= 1.0:
            raise DatasetError(f"prevalence must be in [0, 1], got {prevalence}")
        self.n = self.DEFAULT_N[split] if n is None else int(n)
        if self.n < 0:
            raise DatasetError(f"n must be >= 0, got {n}")
        # disjoint seeds per split: a 63-bit seed from (seed, split)
        salt = 0x5E1D if self.version == "v1" else 0x5E1E
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, SPLITS.index(split), salt])
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
            self._cache[b] = phantom_block(
                b, self.size, self.stream_seed, self.prevalence, m, **self._version_args()
            )
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
            batch = generate_phantoms(
                self.n, self.size, self.stream_seed, self.prevalence, **self._version_args()
            )
            cached = (batch.images, batch.labels)
            if self._small():
                self._all = cached
            else:
                return cached
        return cached[0].clone(), cached[1].clone()

    def _version_args(self) -> dict:
        return {"version": self.version, "label_noise": self.label_noise}

    def describe(self) -> dict:
        return {
            "source": "phantoms",
            "fingerprint": phantom_fingerprint(self.generator, self.seed),
            "split": self.split,
            "split_seed": None,
            "labels": list(self.labels),
            "size": self.size,
            "n": self.n,
            "seed": self.seed,
            "prevalence": self.prevalence,
            "generator": self.generator,
            "version": self.version,
            "label_noise": self.label_noise,
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


class _PhantomsV2(AnatomyMixin, FindingsV2Mixin, FindingsMixin):
    """One block of v2 phantoms (see the module docstring): v2 draws, v1's shapes, v2 rendering."""

    V2 = True

    def __init__(self, m: int, size: int, gen: torch.Generator, prevalence: float, label_noise: float = 0.0):
        self.m, self.S, self.g = m, size, gen
        self.edge = 0.012 + 1.2 / size
        self.prevalence, self.label_noise = prevalence, label_noise
        self._draw_patient_v2()
        self._draw_findings_v2()

    select = _Phantoms.select
