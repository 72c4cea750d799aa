"""NIH ChestX-ray14 (Wang et al., 2017) from a local copy.

Layout accepted under the data root: ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``
(``Patient Gender`` or ``Patient Sex``), images ``NNNNNNNN_NNN.png`` in the root, in ``images/``,
in ``images_0XX/`` or in ``images_0XX/images/``. The official ``train_val_list.txt`` /
``test_list.txt`` give the test split when present (val = a 10% of the train/val patients drawn
with the split seed); otherwise the split is a 70/10/20 split by patient under the split seed
(``split_seed``, a constant by default, never the run's ``seed``). Images are 8-bit PNGs (a few RGBA),
read as grey levels / 255 and resized to ``size``. When ``BBox_List_2017.csv`` is present,
``ds.findings(i)`` gives its boxes in pixels of the resized image (``boed data preview`` draws them).
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.base import seeded_split
from datasets.errors import DatasetError
from datasets.folder import FileDataset
from datasets.tables import LabelTable, read_labels_csv

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED = ("Image Index", "Finding Labels", "Patient ID")


class NIHDataset(FileDataset):
    """ChestX-ray14 as an :class:`~datasets.base.ImageDataset` (labels: the 14 findings + Any)."""

    source = "nih"
    suffixes = (".png",)

    def discover(self) -> list[Path]:
        dirs = [self.root, self.root / "images"]
        for d in sorted(self.root.glob("images_*")):
            dirs += [d, d / "images"]
        out, seen = [], set()
        for d in dirs:
            if not d.is_dir() or os.path.realpath(d) in seen:
                continue
            if self.outside(d) is not None:  # a linked images folder outside the root
                self._bad(self.outside(d), d)
                continue
            seen.add(os.path.realpath(d))
            with os.scandir(d) as it:
                for e in it:
                    if e.is_file() and e.name.lower().endswith(".png"):
                        reason = self.outside(Path(e.path)) if e.is_symlink() else None
                        if reason is not None:
                            self._bad(reason, e.path)
                        else:
                            out.append(Path(e.path))
        return sorted(out)

    def default_csv(self) -> Path | None:
        for name in CSV_NAMES:
            if (self.root / name).is_file():
                return self.root / name
        raise DatasetError(f"no {' or '.join(CSV_NAMES)} in the ChestX-ray14 data root", self.root)

    def read_table(self, labels_csv) -> LabelTable:
        path = Path(labels_csv) if labels_csv is not None else self.default_csv()
        import pandas as pd

        try:
            header = [c.strip() for c in pd.read_csv(path, nrows=0).columns]
        except Exception as exc:
            raise DatasetError(f"unreadable CSV ({type(exc).__name__}: {exc})", path) from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DatasetError(f"missing column(s) {', '.join(missing)} (found: {', '.join(header)})", path)
        table = read_labels_csv(path, skip_bad=self.skip_bad, require_patient=True)
        self.skipped.extend(table.skipped)
        return table

    def split_files(self) -> list[Path]:
        lists = [self.root / "train_val_list.txt", self.root / "test_list.txt"]
        return lists if all(p.is_file() for p in lists) else []

    def choose(self, keys: list[str], patients: list[str] | None) -> set[str]:
        if self.split == "all":
            return set(keys)
        test_list, train_list = self.root / "test_list.txt", self.root / "train_val_list.txt"
        if not self.split_files():
            return super().choose(keys, patients)
        test = set(test_list.read_text().split())
        if self.split == "test":
            return {k for k in keys if k in test}
        train_val = set(train_list.read_text().split())
        pairs = [(k, p) for k, p in zip(keys, patients, strict=True) if k in train_val]
        val_patients = seeded_split([p for _, p in pairs], "train", self.split_seed, (0.1, 0.0, 0.9))
        want_val = self.split == "val"
        return {k for k, p in pairs if (p in val_patients) == want_val}

    def describe(self) -> dict:
        return super().describe() | {"split_lists": bool(self.split_files())}

    # -- bounding boxes (BBox_List_2017.csv: about 1,000 boxes for 880 images in the real data) -----
    def findings(self, i: int) -> list:
        """Boxed findings of image ``i`` from ``BBox_List_2017.csv`` (empty when there is none),
        as :class:`~datasets.phantoms.Finding` in pixels of the returned ``size`` image."""
        from datasets.phantoms import Finding

        boxes = self._boxes().get(self.ids[i], [])
        if not boxes:
            return []
        from PIL import Image

        with Image.open(self.paths[i]) as im:  # header only: the original size
            w, h = im.size
        side = min(w, h)
        r_off, c_off = (h - side) / 2, (w - side) / 2
        scale = self.size / side
        out = []
        for name, x, y, bw, bh in boxes:
            r0, c0 = (y - r_off) * scale, (x - c_off) * scale
            r1, c1 = (y + bh - r_off) * scale, (x + bw - c_off) * scale
            clip = lambda t: int(min(max(round(t), 0), self.size))  # noqa: E731
            box = (clip(r0), clip(c0), clip(r1), clip(c1))
            if box[2] > box[0] and box[3] > box[1]:
                out.append(Finding(name, box))
        return out

    def findings_known(self, i: int) -> bool:
        """Whether ``BBox_List_2017.csv`` locates the findings of image ``i`` (about 880 images of
        the real data): an empty :meth:`findings` means "no boxes given", not "no findings"."""
        return self.ids[i] in self._boxes()

    def _boxes(self) -> dict[str, list[tuple[str, float, float, float, float]]]:
        if getattr(self, "_box_table", None) is None:
            self._box_table = {}
            path = self.root / "BBox_List_2017.csv"
            if path.is_file():
                import csv

                from datasets.labels import LabelError, canonical_finding

                with open(path, newline="") as fh:
                    rows = csv.reader(fh)
                    next(rows, None)  # header: the names were split at commas
                    for k, row in enumerate(rows, start=2):
                        try:
                            name = canonical_finding(row[1])
                            x, y, w, h = (float(v) for v in row[2:6])
                        except (IndexError, ValueError, LabelError) as exc:
                            raise DatasetError(f"row {k}: bad bounding box ({exc})", path) from None
                        self._box_table.setdefault(row[0].strip(), []).append((name, x, y, w, h))
        return self._box_table
