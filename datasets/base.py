"""The dataset interface shared by every image source, plus small helpers.

An :class:`ImageDataset` is a map-style ``torch.utils.data.Dataset``: ``ds[i]`` is a dict
``{"idx": str, "img": (1, S, S) float32 in [0, 1], "lab": (L,) float32 (NaN = unknown)}``.
``ds.labels`` names the ``L`` label columns, ``ds.ids`` the images, ``ds.describe()`` is a
JSON-able description for checkpoints and runs, ``ds.tensors()`` loads everything into memory and
``ds.skipped`` lists ``(file, reason)`` pairs of inputs left out with ``skip_bad=True``.

Every ``describe()`` holds at least :data:`DESCRIBE_KEYS`: ``source`` ("phantoms", "nih", "dicom",
"folder"), ``fingerprint`` (a sha256 hex digest of what identifies the collection, see
:func:`files_fingerprint` and :func:`phantom_fingerprint`), ``split``, ``split_seed``, ``labels``,
``size`` and ``n``; :mod:`datasets.provenance` compares two of them.

Splits: file sources split with :func:`seeded_split` under a *split seed* that is a constant by
default (:data:`DEFAULT_SPLIT_SEED`) and separate from the run's ``seed`` (which only chooses the
``n``-image subset of a split), so the test split is the same whatever seed a run uses.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datasets import DEFAULT_MAX_PIXELS, DEFAULT_SPLIT_SEED  # noqa: F401  (re-exported)
from datasets.errors import DatasetError

log = logging.getLogger("datasets")

SPLITS = ("train", "val", "test", "all")
DESCRIBE_KEYS = ("source", "fingerprint", "split", "split_seed", "labels", "size", "n")


class ImageDataset(torch.utils.data.Dataset, abc.ABC):
    """Base class: subclasses set ``labels``, ``ids``, ``size`` and implement ``_load(i)``.

    ``_load(i)`` returns ``(img (1, S, S) float32, lab (L,) float32)``.
    """

    labels: tuple[str, ...]
    ids: list[str]
    size: int
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        idx, img, lab = self._item(i % len(self))
        return {"idx": idx, "img": img, "lab": lab}

    def _item(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        """``(id, image, labels)`` of item ``i`` (file sources may substitute a bad item)."""
        img, lab = self._load(i)
        return self.ids[i], img, lab

    @abc.abstractmethod
    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``(1, S, S)`` and labels ``(L,)`` of item ``i``."""

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``(n, 1, S, S)`` and labels ``(n, L)`` in memory."""
        n = len(self)
        images = torch.empty(n, 1, self.size, self.size)
        labels = torch.empty(n, len(self.labels))
        for i in range(n):
            images[i], labels[i] = self._load(i)
        return images, labels

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the dataset (stored with checkpoints and runs)."""

    def __repr__(self) -> str:
        d = self.describe()
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in d.items() if k != 'labels')})"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def to_square(img: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop a 2-D image to a square and resize it to ``size`` (antialiased bilinear).

    Returns ``(1, size, size)`` float32; values keep their range.
    """
    t = torch.as_tensor(np.asarray(img, dtype=np.float32))
    h, w = t.shape
    side = min(h, w)
    r0, c0 = (h - side) // 2, (w - side) // 2
    t = t[r0 : r0 + side, c0 : c0 + side]
    if side != size:
        t = F.interpolate(
            t[None, None], size=(size, size), mode="bilinear", antialias=side > size, align_corners=False
        )[0, 0]
    return t.unsqueeze(0).contiguous()


def seeded_split(keys: Sequence[str], split: str, seed: int, fractions=(0.7, 0.1, 0.2)) -> set[str]:
    """The set of ``keys`` (e.g. patient ids) in ``split`` of a seeded random split (train/val/test)."""
    unique = sorted(set(keys))
    if split == "all":
        return set(unique)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5B117])
    order = [unique[i] for i in rng.permutation(len(unique))]
    n_train = round(fractions[0] * len(order))
    n_val = round(fractions[1] * len(order))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(order))}
    lo, hi = bounds[split]
    return set(order[lo:hi])


def files_fingerprint(root: Path, files: Sequence[Path], extra: Sequence[Path | None] = ()) -> str:
    """sha256 hex of a file collection: sorted relative paths with their sizes, then the bytes of
    the ``extra`` files (the labels CSV, split lists). Cheap: one ``stat`` per file, no decoding;
    independent of where the root lies on disk."""
    h = hashlib.sha256(b"boed-files-v1\n")
    entries = []
    for p in files:
        try:
            size = os.stat(p).st_size
        except OSError:
            size = -1
        entries.append((relpath(p, root).replace(os.sep, "/"), size))
    for rel, size in sorted(entries):
        h.update(f"{rel}\0{size}\n".encode())
    for p in extra:
        if p is not None and Path(p).is_file():
            h.update(b"\0extra\0" + Path(p).name.encode() + b"\0")
            h.update(Path(p).read_bytes())
    return h.hexdigest()


def phantom_fingerprint(generator: str, seed: int) -> str:
    """sha256 hex of a phantom collection: the generator's version and the base seed."""
    return hashlib.sha256(f"boed-phantoms-v1\n{generator}\n{int(seed)}".encode()).hexdigest()


def subsample(items: list, n: int | None, seed: int) -> list:
    """The first ``n`` of a seeded shuffle of ``items`` (all of them, in order, when ``n`` is None)."""
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise DatasetError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5A3B])
    keep = sorted(rng.permutation(len(items))[:n].tolist())
    return [items[i] for i in keep]


def relpath(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
