"""Image files on disk: a folder of PNG/JPEG images with a labels CSV, and the shared machinery
(:class:`FileDataset`) that the NIH and DICOM sources build on.

Matching: each CSV row names an image by relative path, file name or file stem. A row whose image
is missing, an image no row names, an unreadable file: each raises one :class:`DatasetError`
naming the file and the reason, or with ``skip_bad=True`` is logged, skipped and listed in
``ds.skipped``. Files are checked (header, dimensionality) when the dataset opens if
``skip_bad`` (so the skipped count is known up front), else when an image is first loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.base import (
    DEFAULT_SPLIT_SEED,
    ImageDataset,
    check_split,
    files_fingerprint,
    log,
    relpath,
    seeded_split,
    subsample,
    to_square,
)
from datasets.errors import DatasetError
from datasets.labels import LABELS
from datasets.tables import LabelTable, read_labels_csv

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_CSV_NAMES = ("labels.csv", "Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")


def _pil():
    from PIL import Image, UnidentifiedImageError

    return Image, UnidentifiedImageError


def check_image_file(path: Path) -> None:
    """Cheap validity check of a PNG/JPEG: header, frame count and CRCs (no full decode)."""
    Image, Unidentified = _pil()
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise DatasetError(f"multi-frame image ({im.n_frames} frames); expected one 2-D image", path)
            im.verify()
    except DatasetError:
        raise
    except (Unidentified, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"unreadable or corrupt image ({exc})", path) from None


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG as a 2-D float32 array in [0, 1] (8-bit / 255, 16-bit / 65535; colour -> luminance)."""
    Image, Unidentified = _pil()
    path = Path(path)
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise DatasetError(f"multi-frame image ({im.n_frames} frames); expected one 2-D image", path)
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float32)
                top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
                arr = arr / top
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
                arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError("image file not found", path) from None
    except (Unidentified, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"unreadable or corrupt image ({exc})", path) from None
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise DatasetError(f"wrong dimensionality {arr.shape}; expected one 2-D image", path)
    return np.clip(arr, 0.0, 1.0)


class FileDataset(ImageDataset):
    """Images from files plus labels; subclasses say how to find, check and read files."""

    source = "files"
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    fractions = (0.7, 0.1, 0.2)

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "train",
        size: int = 64,
        n: int | None = None,
        seed: int = 0,
        split_seed: int = DEFAULT_SPLIT_SEED,
        skip_bad: bool = False,
        labels_csv: str | os.PathLike | None = None,
        validate: bool | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError("data root not found or not a folder", self.root)
        self.split, self.size, self.n, self.seed = check_split(split), int(size), n, int(seed)
        self.split_seed = int(split_seed)
        if self.size < 1:
            raise DatasetError(f"size must be >= 1, got {size}")
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []
        files = self.discover()
        table = self.read_table(labels_csv)
        self.csv_path = table.path if table is not None else None
        self.fingerprint = files_fingerprint(self.root, files, [self.csv_path, *self.split_files()])
        keys, paths, values, patients = self._match(files, table)
        chosen = self.choose(keys, patients)
        rows = [i for i, k in enumerate(keys) if k in chosen]
        rows = subsample(rows, n, seed)
        self.ids = [keys[i] for i in rows]
        self.paths = [paths[i] for i in rows]
        self._values = values[rows] if len(rows) else np.zeros((0, values.shape[1]), np.float32)
        if validate if validate is not None else skip_bad:
            self._validate()
        if self.skipped:
            log.warning("%s: skipped %d bad input(s); see ds.skipped", self.root, len(self.skipped))

    # -- hooks ------------------------------------------------------------------------------------
    def discover(self) -> list[Path]:
        """Image files under the root (recursive, sorted)."""
        out = []
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                if name.lower().endswith(self.suffixes):
                    out.append(Path(dirpath) / name)
        return sorted(out)

    def default_csv(self) -> Path | None:
        for name in LABEL_CSV_NAMES:
            if (self.root / name).is_file():
                return self.root / name
        csvs = sorted(self.root.glob("*.csv"))
        if len(csvs) == 1:
            return csvs[0]
        if len(csvs) > 1:
            raise DatasetError(
                f"several CSV files ({', '.join(p.name for p in csvs)}); name one labels.csv", self.root
            )
        return None

    def read_table(self, labels_csv) -> LabelTable | None:
        path = Path(labels_csv) if labels_csv is not None else self.default_csv()
        if path is None:
            raise DatasetError(f"no labels CSV (expected {LABEL_CSV_NAMES[0]} or one *.csv)", self.root)
        table = read_labels_csv(path, skip_bad=self.skip_bad)
        self.skipped.extend(table.skipped)
        return table

    def split_files(self) -> list[Path]:
        """Files besides the images and the CSV that decide the split (part of the fingerprint)."""
        return []

    def check_file(self, path: Path) -> None:
        check_image_file(path)

    def read_file(self, path: Path) -> np.ndarray:
        return read_image_file(path)

    def choose(self, keys: list[str], patients: list[str] | None) -> set[str]:
        """The keys in this split: seeded by the split seed (not the run seed), by patient when
        patients are known."""
        if self.split == "all":
            return set(keys)
        groups = patients if patients is not None else keys
        chosen_groups = seeded_split(groups, self.split, self.split_seed, self.fractions)
        return {k for k, g in zip(keys, groups, strict=True) if g in chosen_groups}

    # -- matching files and rows ------------------------------------------------------------------
    def _bad(self, reason: str, path) -> None:
        if not self.skip_bad:
            raise DatasetError(reason, path)
        log.info("skipping %s: %s", path, reason)  # one summary warning at the end
        self.skipped.append((str(path), reason))

    def _match(self, files: list[Path], table: LabelTable | None):
        by_rel = {relpath(p, self.root).replace(os.sep, "/"): p for p in files}
        by_name: dict[str, Path] = {}
        by_stem: dict[str, Path] = {}
        for p in files:
            by_name.setdefault(p.name, p)
            by_stem.setdefault(p.stem, p)
        if table is None:  # no labels: every file, labels unknown
            keys = list(by_rel)
            values = np.full((len(keys), len(LABELS)), np.nan, dtype=np.float32)
            self.labels = LABELS
            return keys, [by_rel[k] for k in keys], values, None
        self.labels = table.labels
        keys, paths, rows, used = [], [], [], set()
        for i, key in enumerate(table.keys):
            k = key.replace("\\", "/")
            path = by_rel.get(k) or by_name.get(Path(k).name) or by_stem.get(k)
            if path is None:
                self._bad(f"label row for {key!r} has no image under {self.root}", table.path)
                continue
            if path in used:
                self._bad(f"two label rows name the same image file {relpath(path, self.root)}", table.path)
                continue
            used.add(path)
            keys.append(key)
            paths.append(path)
            rows.append(i)
        for p in files:
            if p not in used and not self._row_was_skipped(p, table):
                self._bad(f"image has no row in the labels CSV {table.path.name}", p)
        values = table.values[rows] if rows else np.zeros((0, len(table.labels)), np.float32)
        patients = [table.patients[i] for i in rows] if table.patients is not None else None
        return keys, paths, values, patients

    def _row_was_skipped(self, path: Path, table: LabelTable) -> bool:
        """Whether ``path``'s label row was already skipped as bad (so it is counted once)."""
        if not table.skipped_keys:
            return False
        rel = relpath(path, self.root).replace(os.sep, "/")
        return bool({rel, path.name, path.stem} & table.skipped_keys)

    def _validate(self) -> None:
        keep = []
        for i, p in enumerate(self.paths):
            try:
                self.check_file(p)
                keep.append(i)
            except DatasetError as exc:
                self._bad(exc.reason, p)
        self.ids = [self.ids[i] for i in keep]
        self.paths = [self.paths[i] for i in keep]
        self._values = self._values[keep]

    # -- ImageDataset -----------------------------------------------------------------------------
    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = to_square(self.read_file(self.paths[i]), self.size).clamp_(0, 1)
        return img, torch.from_numpy(self._values[i].copy())

    def label_values(self) -> np.ndarray:
        """``(n, L)`` labels without loading any image."""
        return self._values.copy()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "split_seed": self.split_seed,
            "labels": list(self.labels),
            "size": self.size,
            "n": len(self.ids),
            "seed": self.seed,
            "data_root": str(self.root),
            "labels_csv": None if self.csv_path is None else str(self.csv_path),
            "skipped": len(self.skipped),
        }


class FolderDataset(FileDataset):
    """A folder of PNG/JPEG images (any depth) plus a labels CSV with any label columns.

    The CSV is ``labels_csv``, else ``labels.csv``/``Data_Entry_2017*.csv`` in the root, else the
    root's only ``*.csv``. With a ``Finding Labels`` column the labels are the ChestX-ray14 schema;
    otherwise every non-metadata column is a label (0, 1, empty = unknown). Splits are seeded
    70/10/20 by patient (a ``Patient ID`` column) or by image, under ``split_seed`` (a constant by
    default); ``seed`` only picks the ``n``-image subset.
    """

    source = "folder"
