"""CR/DX radiographs from DICOM files (pydicom 3).

:func:`read_dicom` turns one file into a 2-D float32 image in [0, 1], MONOCHROME2 sense:

1. decode the stored values (``ds.pixel_array``; compressed transfer syntaxes go through pydicom's
   decoder plugins: RLE and deflate with numpy, JPEG / JPEG-LS / JPEG 2000 with pylibjpeg);
2. the modality LUT (Modality LUT Sequence or Rescale Slope/Intercept);
3. the VOI LUT: the VOI LUT Sequence if present, else Window Center/Width (LINEAR, LINEAR_EXACT,
   SIGMOID), else nothing;
4. normalise by the output range the standard gives that stage: the VOI LUT's bit depth, else the
   stored-value range (``BitsStored``, ``PixelRepresentation``) through the modality LUT, which is
   also the output range of windowing;
5. invert exactly once when the image is MONOCHROME1 (or MONOCHROME2 with Presentation LUT Shape
   INVERSE). pydicom's ``apply_presentation_lut`` is not used: it would invert INVERSE regardless.

Pixel spacing in mm comes from PixelSpacing when present and positive, else ImagerPixelSpacing,
else it is unknown (``None``). Multi-frame files, colour images and objects without pixel data
(reports, presentation states...) are refused with a :class:`DatasetError`.

:class:`DicomDataset` is a folder of such files (any depth; ``*.dcm``, ``*.dicom`` or files with
the ``DICM`` preamble) with an optional labels CSV (NIH-style or one column per label); without a
CSV every label is unknown (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError
from datasets.folder import LABEL_CSV_NAMES, FileDataset
from datasets.tables import LabelTable, read_labels_csv

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class DicomImage:
    """One decoded radiograph: ``pixels`` 2-D float32 in [0, 1] (MONOCHROME2 sense)."""

    pixels: np.ndarray
    spacing: tuple[float, float] | None  # (row, column) in mm
    photometric: str
    inverted: bool
    modality: str | None
    transfer_syntax: str


def _pydicom():
    import pydicom
    from pydicom.errors import InvalidDicomError

    return pydicom, InvalidDicomError


def _open(path: Path, header_only: bool):
    pydicom, InvalidDicomError = _pydicom()
    try:
        return pydicom.dcmread(path, defer_size="1 KB" if header_only else None)
    except FileNotFoundError:
        raise DatasetError("DICOM file not found", path) from None
    except InvalidDicomError as exc:
        raise DatasetError(f"not a DICOM file ({exc})", path) from None
    except Exception as exc:  # truncated or malformed data elements
        raise DatasetError(f"unreadable or corrupt DICOM ({type(exc).__name__}: {exc})", path) from None


def _check_header(ds, path: Path) -> str:
    """Refuse what is not a single-frame greyscale image; check the decoder; return the syntax UID."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = getattr(ds, "SOPClassUID", None)
        what = f"{sop.name}" if sop is not None else "unknown SOP class"
        raise DatasetError(
            f"no pixel data: not an image object ({what}, modality {ds.get('Modality', '?')})", path
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DatasetError(
            f"multi-frame object ({frames} frames) is not supported; expected one 2-D radiograph", path
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DatasetError(
            f"colour or unsupported photometric interpretation {photometric or '?'}"
            f" (SamplesPerPixel={samples}); expected MONOCHROME1 or MONOCHROME2",
            path,
        )
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if uid is None:
        raise DatasetError("no Transfer Syntax UID in the file meta information", path)
    if uid.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise DatasetError(f"unsupported transfer syntax {uid.name} ({uid})", path) from None
        if not decoder.is_available:
            missing = "; ".join(getattr(decoder, "missing_dependencies", [])) or "a plugin"
            raise DatasetError(
                f"transfer syntax {uid.name} needs a decoder plugin that is not installed ({missing}); "
                "install pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg",
                path,
            )
    return str(uid)


def _range_after_modality(ds) -> tuple[float, float]:
    """The nominal output range of the modality stage (also the output range of windowing)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _spacing(ds) -> tuple[float, float] | None:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None:
            try:
                row, col = (float(v) for v in value)
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return row, col
    return None


def check_dicom_file(path: str | Path) -> None:
    """Header-only validity check (no pixel decode)."""
    path = Path(path)
    _check_header(_open(path, header_only=True), path)


def read_dicom(path: str | Path) -> DicomImage:
    """Read a CR/DX radiograph into [0, 1] (see the module docstring for the exact order)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    ds = _open(path, header_only=False)
    uid = _check_header(ds, path)
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise DatasetError(f"cannot decode pixel data ({type(exc).__name__}: {exc})", path) from None
    if stored.ndim != 2:
        raise DatasetError(f"wrong dimensionality {stored.shape}; expected one 2-D image", path)
    try:
        arr = apply_modality_lut(stored, ds)
        if ds.get("VOILUTSequence"):
            if np.issubdtype(arr.dtype, np.floating):  # LUT inputs are integers by definition
                arr = np.rint(arr).astype(np.int64)
            arr = apply_voi_lut(arr, ds, prefer_lut=True)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        else:
            lo, hi = _range_after_modality(ds)
            if "WindowCenter" in ds and "WindowWidth" in ds:
                arr = apply_voi_lut(arr.astype(np.float64), ds, prefer_lut=False)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"bad modality/VOI LUT attributes ({type(exc).__name__}: {exc})", path) from None
    pixels = ((np.asarray(arr, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)).clip(0, 1)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "IDENTITY")).strip().upper()
    invert = photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")
    if invert:
        pixels = 1.0 - pixels
    return DicomImage(
        pixels=pixels.astype(np.float32),
        spacing=_spacing(ds),
        photometric=photometric,
        inverted=invert,
        modality=ds.get("Modality"),
        transfer_syntax=uid,
    )


class DicomDataset(FileDataset):
    """A folder of DICOM radiographs with an optional labels CSV (see the module docstring)."""

    source = "dicom"

    def discover(self) -> list[Path]:
        out = []
        for p in sorted(self.root.rglob("*")):
            if not p.is_file():
                continue
            if p.suffix.lower() in DICOM_SUFFIXES:
                out.append(p)
            elif p.suffix == "":
                try:
                    with open(p, "rb") as fh:
                        fh.seek(128)
                        if fh.read(4) == b"DICM":
                            out.append(p)
                except OSError:
                    continue
        return out

    def read_table(self, labels_csv) -> LabelTable | None:
        if labels_csv is None:
            found = [self.root / n for n in LABEL_CSV_NAMES if (self.root / n).is_file()]
            csvs = found or sorted(self.root.glob("*.csv"))
            if not csvs:
                return None
            if len(csvs) > 1:
                raise DatasetError(
                    f"several CSV files ({', '.join(p.name for p in csvs)}); name one labels.csv", self.root
                )
            labels_csv = csvs[0]
        table = read_labels_csv(labels_csv, skip_bad=self.skip_bad)
        self.skipped.extend(table.skipped)
        return table

    def check_file(self, path: Path) -> None:
        check_dicom_file(path)

    def read_file(self, path: Path) -> np.ndarray:
        return read_dicom(path).pixels

    def spacing(self, i: int) -> tuple[float, float] | None:
        """Pixel spacing (row, column) in mm of the *stored* image ``i`` (header only), or None."""
        return _spacing(_open(self.paths[i], header_only=True))


DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def new_dicom(
    stored: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    transfer_syntax: str | None = None,
):
    """A minimal single-frame DX dataset holding ``stored`` values (for export and tests).

    ``transfer_syntax`` (default Explicit VR Little Endian) sets the file meta; compressing is the
    caller's business (``ds.compress(uid)``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.asarray(stored)
    if stored.ndim != 2:
        raise ValueError(f"stored values must be 2-D, got shape {stored.shape}")
    ds = Dataset()
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
