"""Image files on disk: a folder of PNG/JPEG images with a labels CSV, and the shared machinery
(:class:`FileDataset`) that the NIH and DICOM sources build on.

Matching: each CSV row names an image by relative path, file name or file stem. A row whose image
is missing, an image no row names, an unreadable file: each raises one :class:`DatasetError`
naming the file and the reason, or with ``skip_bad=True`` is logged, skipped and listed in
``ds.skipped``. Files are checked (header, size, dimensionality) when the dataset opens if
``skip_bad`` (so the skipped count is known up front), else when an image is first loaded.

Hostile input:

- size: the declared size (from the header, before decoding) must be at most ``max_pixels``
  (default :data:`~datasets.DEFAULT_MAX_PIXELS`, about 67 Mpx); PIL's own decompression-bomb
  error becomes the same one-line :class:`DatasetError`. JPEGs much larger than the requested
  ``size`` are decoded at 1/2, 1/4 or 1/8 scale (``PIL.Image.draft``); PNG cannot be.
- values: a float image (PIL mode ``F``, e.g. a TIFF) with NaN or inf pixels is refused.
- paths: a CSV key that is absolute or climbs out with ``..`` is refused (no basename fallback for
  it); a file or folder whose real location is outside the data root (a symbolic link pointing
  out) is refused unless ``allow_symlinks=True``, which follows links (folders too, each real
  folder once).
- decode-time failures (a truncated file that passes the header check): with ``skip_bad`` the item
  is skipped: ``tensors()`` drops it (and it leaves ``ids``); ``ds[i]`` records it in ``ds.skipped``
  and returns the next good item instead (deterministic, so a ``DataLoader`` keeps its length; the
  ``idx`` it returns names the item actually given). Without ``skip_bad`` it raises a
  :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from datasets.base import (
    DEFAULT_MAX_PIXELS,
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
MAX_PIXELS_HINT = "raise the cap with max_pixels (--max-pixels) if the image is genuine"


def _pil():
    from PIL import Image, UnidentifiedImageError

    return Image, UnidentifiedImageError


def too_large(what: str, pixels: int, max_pixels: int) -> str:
    """The reason of a size refusal: what was declared, the cap and the option."""
    return (
        f"{what} = {pixels / 1e6:,.1f} Mpx exceeds max_pixels={max_pixels:,} ({max_pixels / 1e6:,.1f} Mpx); "
        f"refused before decoding ({MAX_PIXELS_HINT})"
    )


def _open_image(path: Path, max_pixels: int):
    """``Image.open`` (header only) with the size checked against ``max_pixels``."""
    Image, _ = _pil()
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
            if limit is not None and max_pixels > limit:
                Image.MAX_IMAGE_PIXELS = max_pixels  # a cap raised on purpose: PIL opens up to it
            im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as exc:  # over twice PIL's limit: PIL refuses to open it
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
        raise DatasetError(too_large("declared image size", pixels, max_pixels), path) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    w, h = im.size
    frames = getattr(im, "n_frames", 1)
    if w * h > max_pixels:
        im.close()
        raise DatasetError(too_large(f"declared image {w}x{h}", w * h, max_pixels), path)
    if frames > 1:
        im.close()
        raise DatasetError(f"multi-frame image ({frames} frames); expected one 2-D image", path)
    return im


def check_image_file(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap validity check of a PNG/JPEG: header, declared size, frame count and CRCs (no decode)."""
    _, Unidentified = _pil()
    try:
        with _open_image(Path(path), max_pixels) as im:
            im.verify()
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError("image file not found", path) from None
    except (Unidentified, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"unreadable or corrupt image ({exc})", path) from None


def read_image_file(
    path: str | Path, *, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a PNG/JPEG as a 2-D float32 array in [0, 1] (8-bit / 255, 16-bit / 65535; colour ->
    luminance; float images min-max scaled). With ``size``, a JPEG at least twice as large is
    decoded at the smallest of 1/2, 1/4, 1/8 scale that keeps both sides >= ``size``."""
    _, Unidentified = _pil()
    path = Path(path)
    try:
        with _open_image(path, max_pixels) as im:
            if size is not None and im.format == "JPEG" and min(im.size) >= 2 * size:
                im.draft(None, (size, size))
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float32)
                top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
                arr = arr / top
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                bad = ~np.isfinite(arr)
                if bad.any():
                    raise DatasetError(
                        f"non-finite pixel values: {int(np.isnan(arr).sum())} NaN, "
                        f"{int(np.isinf(arr).sum())} inf in a float (mode F) image",
                        path,
                    )
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


def unsafe_key(key: str) -> bool:
    """Whether a CSV image key is absolute or climbs out of the root with ``..``."""
    k = key.replace("\\", "/")
    return PurePosixPath(k).is_absolute() or ".." in PurePosixPath(k).parts or (len(k) > 1 and k[1] == ":")


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
        max_pixels: int = DEFAULT_MAX_PIXELS,
        allow_symlinks: bool = False,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError("data root not found or not a folder", self.root)
        self._real_root = os.path.realpath(self.root)
        self.max_pixels, self.allow_symlinks = int(max_pixels), bool(allow_symlinks)
        if self.max_pixels < 1:
            raise DatasetError(f"max_pixels must be >= 1, got {max_pixels}")
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
        """Image files under the root (recursive, sorted); see :meth:`walk` for links."""
        return [p for p in self.walk() if self.wanted(p)]

    def wanted(self, path: Path) -> bool:
        """Whether a file found under the root is one of this source's images."""
        return path.name.lower().endswith(self.suffixes)

    def outside(self, path: Path) -> str | None:
        """Why ``path`` may not be read (its real location is outside the data root), or None."""
        if self.allow_symlinks:
            return None
        real = os.path.realpath(path)
        if os.path.commonpath([real, self._real_root]) == self._real_root:
            return None
        kind = "folder" if os.path.isdir(path) else "file"
        return (
            f"symbolic link to a {kind} outside the data root ({real}); not followed "
            "(allow_symlinks=True / --allow-symlinks to follow links)"
        )

    def walk(self) -> list[Path]:
        """Every file under the root, sorted. Links pointing out of the root are refused (bad
        input) unless ``allow_symlinks``; then links are followed, each real folder once."""
        out, seen = [], set()
        for dirpath, dirs, names in os.walk(self.root, followlinks=self.allow_symlinks):
            real = os.path.realpath(dirpath)
            if real in seen:  # a link cycle or a second link to the same folder
                dirs[:] = []
                continue
            seen.add(real)
            keep = []
            for d in sorted(dirs):
                full = Path(dirpath) / d
                if os.path.islink(full) and not self.allow_symlinks:
                    reason = self.outside(full)
                    if reason is not None:
                        self._bad(reason, full)
                    continue  # links inside the root point at folders walked anyway
                keep.append(d)
            dirs[:] = keep
            for name in names:
                full = Path(dirpath) / name
                if os.path.islink(full):
                    reason = self.outside(full)
                    if reason is not None:
                        if self.wanted(full):
                            self._bad(reason, full)
                        continue
                out.append(full)
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
        check_image_file(path, max_pixels=self.max_pixels)

    def read_file(self, path: Path) -> np.ndarray:
        return read_image_file(path, size=self.size, max_pixels=self.max_pixels)

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
        lines = table.rows or [None] * len(table.keys)
        for i, key in enumerate(table.keys):
            k = key.replace("\\", "/")
            if unsafe_key(key):
                self._bad(
                    f"row {lines[i]}: image path {key!r} points outside the data root (absolute or '..'); "
                    "name images relative to the data root",
                    table.path,
                )
                continue
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
        self._keep(keep)

    # -- ImageDataset -----------------------------------------------------------------------------
    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = to_square(self.read_file(self.paths[i]), self.size).clamp_(0, 1)
        return img, torch.from_numpy(self._values[i].copy())

    def _item(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        """Item ``i``; with ``skip_bad`` a file that fails to decode is recorded in ``skipped`` and
        the next good item (``i + 1``, ``i + 2``, ... cyclically) is returned in its place."""
        bad = self.__dict__.setdefault("_bad_items", set())
        for k in range(len(self)):
            j = (i + k) % len(self)
            if j in bad:
                continue
            try:
                img, lab = self._load(j)
            except DatasetError as exc:
                if not self.skip_bad:
                    raise
                bad.add(j)
                self._bad(exc.reason, self.paths[j])
                log.warning("skipped %s: %s", self.paths[j], exc.reason)
                continue
            return self.ids[j], img, lab
        raise DatasetError("every image of the dataset failed to decode (see ds.skipped)", self.root)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``(n, 1, S, S)`` and labels ``(n, L)``; with ``skip_bad`` files that fail to
        decode are recorded in ``skipped`` and removed from the dataset (``ids``, ``len``)."""
        if not self.skip_bad:
            return super().tensors()
        images, keep = [], []
        known_bad = self.__dict__.get("_bad_items", set())  # already recorded by ds[i]
        for i in range(len(self)):
            if i in known_bad:
                continue
            try:
                img, _ = self._load(i)
            except DatasetError as exc:
                self._bad(exc.reason, self.paths[i])
                continue
            images.append(img)
            keep.append(i)
        if len(keep) < len(self):
            log.warning("%s: skipped %d image(s) that failed to decode", self.root, len(self) - len(keep))
            self._keep(keep)
        stacked = torch.stack(images) if images else torch.empty(0, 1, self.size, self.size)
        return stacked, torch.from_numpy(self._values.copy()).reshape(len(keep), len(self.labels))

    def _keep(self, keep: list[int]) -> None:
        self.ids = [self.ids[i] for i in keep]
        self.paths = [self.paths[i] for i in keep]
        self._values = self._values[keep]
        self.__dict__.pop("_bad_items", None)

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
