"""Write phantoms to disk as a ChestX-ray14-style dataset (PNG) or a folder of DICOM files.

Layout (both formats)::

    OUT/Data_Entry_2017_v2020.csv   NIH columns; Image Index = file name
    OUT/BBox_List_2017.csv          one row per finding: Image Index, Finding Label, Bbox [x, y, w, h]
    OUT/images/NNNNNNNN_000.png     8-bit greyscale (format "png"), or
    OUT/images/NNNNNNNN_000.dcm     DX, MONOCHROME2, 12 bits stored in 16 (format "dicom")

File names follow NIH (patient number, follow-up number). The loaders read them back identically
up to the quantisation: ``round(x * 255) / 255`` for PNG and ``round(x * 4095) / 4095`` for DICOM
(``open_dataset("nih" | "folder" | "dicom", data_root=OUT, split="all")``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError
from datasets.labels import finding_labels_string

FORMATS = ("png", "dicom")
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h]"
DICOM_BITS = 12
FILM_MM = 350.0  # a 35 cm detector: pixel spacing = FILM_MM / size


def nih_name(i: int, suffix: str = ".png") -> str:
    """NIH-style file name of exported image ``i``: patient ``i + 1``, follow-up 0."""
    return f"{i + 1:08d}_000{suffix}"


def quantise(images, fmt: str):
    """What the loaders read back from an exported file: the images quantised like the files."""
    levels = 255 if fmt == "png" else 2**DICOM_BITS - 1
    return (images * levels).round() / levels


def export_phantoms(
    out: str | Path,
    *,
    n: int = 100,
    size: int = 64,
    fmt: str = "png",
    seed: int = 0,
    split: str = "train",
    prevalence: float = 0.5,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``n`` phantoms of ``split`` (the images of ``open_dataset("phantoms", ...)``) to ``out``.

    Returns the image paths. Refuses a folder that already holds an export unless ``overwrite``.
    """
    from datasets.phantoms import PhantomDataset

    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = Path(out)
    csv_path = out / "Data_Entry_2017_v2020.csv"
    if csv_path.exists() and not overwrite:
        raise DatasetError("an export already exists here; choose another folder or overwrite", csv_path)
    (out / "images").mkdir(parents=True, exist_ok=True)
    ds = PhantomDataset(split=split, size=size, n=n, seed=seed, prevalence=prevalence)
    spacing = FILM_MM / size
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xE4])
    paths, rows, boxes = [], [], []
    suffix = ".png" if fmt == "png" else ".dcm"
    for i in range(len(ds)):
        item = ds[i]
        name = nih_name(i, suffix)
        path = out / "images" / name
        age, sex = int(rng.integers(18, 90)), ("M", "F")[int(rng.integers(0, 2))]
        img = item["img"][0].numpy()
        if fmt == "png":
            _write_png(path, img)
        else:
            _write_dicom(
                path, img, patient=f"{i + 1:08d}", age=age, sex=sex, spacing=spacing, seed=seed, index=i
            )
        paths.append(path)
        rows.append(
            [
                name,
                finding_labels_string(item["lab"].numpy()),
                0,
                i + 1,
                age,
                sex,
                "PA",
                size,
                size,
                f"{spacing:.4f}",
                f"{spacing:.4f}",
            ]
        )
        for f in ds.findings(i):
            r0, c0, r1, c1 = f.bbox
            boxes.append([name, f.name, c0, r0, c1 - c0, r1 - r0])
        if progress is not None:
            progress(1)
    with open(csv_path, "w", newline="") as fh:
        fh.write(NIH_HEADER + "\n")
        csv.writer(fh).writerows(rows)
    with open(out / "BBox_List_2017.csv", "w", newline="") as fh:
        fh.write(BBOX_HEADER + "\n")
        csv.writer(fh).writerows(boxes)
    return paths


def _write_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L").save(path)


def _write_dicom(
    path: Path, img: np.ndarray, *, patient: str, age: int, sex: str, spacing: float, seed: int, index: int
) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from datasets.dicom import new_dicom

    ds = new_dicom(np.round(img * (2**DICOM_BITS - 1)).astype(np.uint16), bits_stored=DICOM_BITS)
    uid = generate_uid(entropy_srcs=["boed-phantom", str(seed), str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["boed-phantom-study", str(seed), str(index)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["boed-phantom-series", str(seed), str(index)])
    ds.PatientID = patient
    ds.PatientName = f"Phantom^{patient}"
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.PresentationLUTShape = "IDENTITY"
    ds.save_as(path, enforce_file_format=True)
