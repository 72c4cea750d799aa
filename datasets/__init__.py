"""Image sources, the label schema, mask distributions and image conventions.

Images are float32 ``(B, 1, H, W)`` in [0, 1] (MONOCHROME2: air dark, bone bright); masks the same
shape in {0, 1} with 1 = observed; labels ``(B, L)`` float32 with NaN = unknown. This package
imports nothing else of the project.

Sources, all behind :func:`open_dataset`:

- ``"phantoms"``: procedural chest radiographs with localized findings (:mod:`datasets.phantoms`);
- ``"nih"``: NIH ChestX-ray14 (:mod:`datasets.nih`);
- ``"dicom"``: a folder of CR/DX DICOM files, optionally with a labels CSV (:mod:`datasets.dicom`);
- ``"folder"``: a folder of PNG/JPEG images with a labels CSV (:mod:`datasets.folder`);
- ``"chestxray"``: ChestX-ray14 when a data root is given (argument or ``BOED_DATA_ROOT``), else
  the phantoms.

``"phantoms"`` is generator version v2 (:data:`datasets.phantoms.DEFAULT_VERSION`: graded
difficulty, ChestX-ray14 prevalences and co-occurrence, optional label noise; the shipped
checkpoints are trained on it); the versioned names :data:`PHANTOM_SOURCES` pick a version
explicitly: ``"phantoms-v2"`` (the same images) and ``"phantoms-v1"`` (the original, easy phantoms,
bit-identical to what ``"phantoms"`` was before v2 became the default; see
:mod:`datasets.phantoms`). They describe themselves as source ``"phantoms"`` with the
version in ``describe()["version"]`` and in the fingerprint.

Every dataset's ``describe()`` names its source, a fingerprint of the collection, the split and
the split seed (:data:`datasets.base.DESCRIBE_KEYS`); :mod:`datasets.provenance` tells whether data
may hold images a checkpoint was trained on, or is another source than its training data. File
sources refuse hostile input with one-line :class:`~datasets.errors.DatasetError` messages (see
:mod:`datasets.folder` and :mod:`datasets.dicom`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from datasets.labels import ANY, FINDINGS, LABELS

if TYPE_CHECKING:
    from datasets.base import ImageDataset

__all__ = [
    "ANY",
    "DATA_ROOT_ENV",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SPLIT_SEED",
    "FINDINGS",
    "IMAGE_SOURCES",
    "LABELS",
    "PHANTOM_SOURCES",
    "open_dataset",
]

IMAGE_SOURCES = ("chestxray", "phantoms", "nih", "dicom", "folder")
PHANTOM_SOURCES = {"phantoms-v1": "v1", "phantoms-v2": "v2"}
"""Versioned names of the phantom source (accepted wherever an image source is): name -> version."""
DATA_ROOT_ENV = "BOED_DATA_ROOT"
DEFAULT_SPLIT_SEED = 0
"""The split seed of file sources unless one is given: a constant, never the run's seed."""
DEFAULT_MAX_PIXELS = 8192 * 8192
"""Largest image a loader decodes (declared pixels, all frames and samples): about 67 Mpx."""


def open_dataset(
    images: str = "chestxray",
    *,
    split: str = "train",
    size: int = 64,
    n: int | None = None,
    data_root: str | os.PathLike | None = None,
    seed: int = 0,
    split_seed: int = DEFAULT_SPLIT_SEED,
    skip_bad: bool = False,
    prevalence: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_symlinks: bool = False,
    allow_modalities: tuple[str, ...] | list[str] = (),
    label_noise: float = 0.0,
) -> ImageDataset:
    """Open an image source as an :class:`~datasets.base.ImageDataset`.

    Args:
        images: one of :data:`IMAGE_SOURCES` or :data:`PHANTOM_SOURCES`.
        split: "train", "val" or "test" ("all" for file sources: every image).
        size: side of the square images returned (file images are centre-cropped and resized).
        n: number of images (phantoms: default 2,000/500/500; files: a seeded subset, default all).
        data_root: folder of a file source; for "chestxray" and "nih" also ``$BOED_DATA_ROOT``.
        seed: the run's seed: which phantoms; which ``n``-image subset of a file split. It never
            moves images between train, val and test.
        split_seed: file sources: seed of the train/val/test split (default
            :data:`~datasets.base.DEFAULT_SPLIT_SEED`, a constant; NIH with official lists: only the
            val part). Phantoms have none: each ``(seed, split)`` is its own generator stream.
        skip_bad: skip (and list in ``ds.skipped``) bad files and label rows instead of raising;
            also files that fail only when decoded (see :mod:`datasets.folder`).
        prevalence: phantoms only: fraction of images with at least one finding (default: the
            version's, 0.5 for v1, ChestX-ray14's 0.4616 for v2).
        max_pixels: file sources: the largest declared image size decoded (pixels, all frames and
            samples; default :data:`DEFAULT_MAX_PIXELS`), checked from the header before decoding.
        allow_symlinks: file sources: follow symbolic links that point out of the data root
            (refused by default).
        allow_modalities: DICOM: modalities besides CR and DX to read anyway (with a warning),
            e.g. ``("MG",)``.
        label_noise: phantoms v2 only: probability that each finding label is flipped (default 0).

    Raises:
        DatasetError: unknown source, missing data root, or bad input (names the file and reason).
    """
    from datasets.errors import DatasetError

    if images in PHANTOM_SOURCES:
        from datasets.phantoms import PhantomDataset

        return PhantomDataset(
            split=split,
            size=size,
            n=n,
            seed=seed,
            prevalence=prevalence,
            version=PHANTOM_SOURCES[images],
            label_noise=label_noise,
        )
    if images not in IMAGE_SOURCES:
        valid = ", ".join((*IMAGE_SOURCES, *PHANTOM_SOURCES))
        raise DatasetError(f"unknown image source {images!r}; valid: {valid}")
    if data_root is None and images in ("chestxray", "nih"):
        data_root = os.environ.get(DATA_ROOT_ENV) or None
    if images == "chestxray":
        images = "nih" if data_root is not None else "phantoms"
    if images == "phantoms":
        from datasets.phantoms import PhantomDataset

        return PhantomDataset(
            split=split, size=size, n=n, seed=seed, prevalence=prevalence, label_noise=label_noise
        )
    if data_root is None:
        raise DatasetError(f"--images {images} needs a data root (--data-root PATH or ${DATA_ROOT_ENV})")
    common = dict(
        split=split,
        size=size,
        n=n,
        seed=seed,
        split_seed=split_seed,
        skip_bad=skip_bad,
        max_pixels=max_pixels,
        allow_symlinks=allow_symlinks,
    )
    if images == "nih":
        from datasets.nih import NIHDataset

        return NIHDataset(data_root, **common)
    if images == "dicom":
        from datasets.dicom import DicomDataset

        return DicomDataset(data_root, allow_modalities=tuple(allow_modalities), **common)
    from datasets.folder import FolderDataset

    return FolderDataset(data_root, **common)
