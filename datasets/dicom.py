"""CR/DX radiographs from DICOM files (pydicom 3).

:func:`read_dicom` turns one file into a 2-D float32 image in [0, 1], MONOCHROME2 sense:

1. decode the stored values (``ds.pixel_array``; compressed transfer syntaxes go through pydicom's
   decoder plugins: RLE and deflate with numpy, JPEG / JPEG-LS / JPEG 2000 with pylibjpeg);
2. the modality LUT (Modality LUT Sequence or Rescale Slope/Intercept);
3. the VOI LUT: the VOI LUT Sequence if present, else Window Center/Width (LINEAR, LINEAR_EXACT,
   SIGMOID), else nothing;
4. normalise by the output range the standard gives that stage: the VOI LUT's bit depth, else the
   stored-value range (``BitsStored``, ``PixelRepresentation``) through the modality LUT, which is
   also the output range of windowing; float pixel data (no stored range, no window applied) is
   min-max scaled;
5. invert exactly once when the image is MONOCHROME1 (or MONOCHROME2 with Presentation LUT Shape
   INVERSE). pydicom's ``apply_presentation_lut`` is not used: it would invert INVERSE regardless.

Pixel spacing in mm comes from PixelSpacing when present and positive, else ImagerPixelSpacing,
else it is unknown (``None``).

What is refused, each with one :class:`DatasetError` naming the file and saying what is wrong
(:func:`check_dicom_file` runs every header check without touching the pixel data):

- no Part-10 header (no ``DICM`` preamble): refused, not read with ``force=True``: without file
  meta the transfer syntax is a guess, and forcing parses almost any bytes as a data set;
- truncated files: an element (often Pixel Data) that declares more bytes than the file has, a
  data set that ends before its pixel data, or nothing after the file meta;
- an invalid or private Transfer Syntax UID, a compressed syntax without a decoder;
- objects without pixel data (reports, presentation states...), multi-frame and colour images;
- modalities other than CR and DX (:data:`RADIOGRAPH_MODALITIES`): CT, MR, US, NM, SEG, RTDOSE,
  MG... are refused naming the modality and SOP class, or read with a logged warning when listed
  in ``allow_modalities``;
- absurd sizes: Rows x Columns x SamplesPerPixel x NumberOfFrames over ``max_pixels``, checked from
  the header before the pixel data is read or decoded (an RLE bomb never expands); native
  (uncompressed) pixel data shorter than the declared size, or twice as long or more;
- non-finite values: NaN/inf pixels (float pixel data), a NaN/inf Rescale Slope or Intercept, a
  zero slope, a NaN window centre, a window width that is NaN or <= 0;
- anything else pydicom raises on a malformed file (bad VRs, multi-valued UIDs...) becomes a
  DatasetError too: nothing but DatasetError leaves :func:`check_dicom_file` or :func:`read_dicom`.

A file with no window (no VOI LUT, no Window Center/Width) whose pixels use under
:data:`FLAT_RANGE` of the nominal range is read, with a logged warning naming it: it will look
flat grey.

:class:`DicomDataset` is a folder of such files (any depth; ``*.dcm``, ``*.dicom`` or files with
the ``DICM`` preamble) with an optional labels CSV (NIH-style or one column per label); without a
CSV every label is unknown (NaN).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error

import numpy as np

from datasets import DEFAULT_MAX_PIXELS
from datasets.errors import DatasetError
from datasets.folder import LABEL_CSV_NAMES, FileDataset, too_large
from datasets.tables import LabelTable, read_labels_csv

log = logging.getLogger("datasets")

DICOM_SUFFIXES = (".dcm", ".dicom")
RADIOGRAPH_MODALITIES = ("CR", "DX")
"""Modalities read without a warning: projection radiographs (CR; DX for presentation or processing)."""
FLAT_RANGE = 0.02
"""Share of the nominal value range below which an image without a window is warned about."""
UNDEFINED_LENGTH = 0xFFFFFFFF
# Modality of common SOP classes, for files without a Modality attribute.
_SOP_MODALITY = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",
    "1.2.840.10008.5.1.4.1.1.6.1": "US",
    "1.2.840.10008.5.1.4.1.1.3.1": "US",
    "1.2.840.10008.5.1.4.1.1.20": "NM",
    "1.2.840.10008.5.1.4.1.1.128": "PT",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.1": "RTIMAGE",
}


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


def _guard(path: Path, what: str):
    """Decorator-free guard: turn any non-DatasetError into one naming ``what`` failed."""

    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, kind, exc, tb):
            if exc is None or isinstance(exc, DatasetError) or not isinstance(exc, Exception):
                return False
            raise DatasetError(f"{_explain(what, exc)} ({kind.__name__}: {_first_line(exc)})", path) from None

    return _Guard()


def _explain(what: str, exc: BaseException) -> str:
    """``what`` failed, made specific for the failures pydicom reports on malformed files."""
    text = str(exc)
    if "Unknown Value Representation" in text:
        return f"{what}: an element has an unknown value representation (VR)"
    if type(exc).__name__ == "BytesLengthException":
        return f"{what}: an element's length does not fit its value representation"
    if "encapsulated pixel data" in text:
        return f"{what}: the encapsulated (compressed) pixel data is malformed"
    if isinstance(exc, (struct_error, EOFError)):
        return f"{what}: the file ends inside an element"
    return what


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _open(path: Path):
    """Read the header (pixel data and other large values deferred) and check for truncation."""
    pydicom, InvalidDicomError = _pydicom()
    try:
        size = os.stat(path).st_size
        with _quiet_pydicom() as caught:  # invalid VR values etc.: what we use is checked below
            ds = pydicom.dcmread(path, defer_size="64 KB")
    except FileNotFoundError:
        raise DatasetError("DICOM file not found", path) from None
    except InvalidDicomError as exc:
        if "DICM" in str(exc) or "File Meta" in str(exc):
            raise DatasetError(
                "not a DICOM file: no DICOM Part-10 header (missing 'DICM' preamble at byte 128); "
                "a raw DICOM data set must be re-saved as a Part-10 file",
                path,
            ) from None
        raise DatasetError(f"not a DICOM file ({_first_line(exc)})", path) from None
    except Exception as exc:  # malformed data elements: pydicom raises many types
        reason = _explain("unreadable or corrupt DICOM header", exc)
        raise DatasetError(f"{reason} ({type(exc).__name__}: {_first_line(exc)})", path) from None
    with _guard(path, "malformed DICOM header"):
        eof = next((str(w.message) for w in caught if "End of file reached" in str(w.message)), None)
        if eof is not None and not len(ds):
            raise DatasetError(
                f"truncated file: it ends ({size:,} bytes) inside an element of undefined length "
                "(encapsulated pixel data or a sequence) before its end delimiter",
                path,
            )
        _check_truncation(ds, path, size)
    return ds


class _quiet_pydicom:  # noqa: N801  (a context manager used like a function)
    """Record pydicom's warnings instead of printing them, and silence its logger meanwhile."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings(record=True)
        caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        self._logger = logging.getLogger("pydicom")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)
        return caught

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return self._warnings.__exit__(*exc)


def _check_truncation(ds, path: Path, size: int) -> None:
    meta = getattr(ds, "file_meta", None)
    for container in (meta, ds):
        if container is None or not len(container):
            continue
        tag = list(container.keys())[-1]
        raw = container.get_item(tag)
        tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
        if tell is not None and length not in (None, UNDEFINED_LENGTH) and tell + length > size:
            from pydicom.datadict import keyword_for_tag

            name = keyword_for_tag(tag) or "element"
            raise DatasetError(
                f"truncated file: {name} {tag} declares {length:,} bytes at offset {tell:,} but the "
                f"file ends at {size:,} bytes (cut short, or a corrupt element length)",
                path,
            )
    if not len(ds):
        raise DatasetError(
            f"truncated or empty file: no data set after the file meta information ({size:,} bytes)", path
        )


def _text(value) -> str:
    """A header value as one line (first of a multi-value; runs of whitespace, line breaks of a
    damaged header included, become one space, so a message quoting it stays one line)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    return " ".join(str(value).split())


def _sop_class(ds) -> tuple[str, str]:
    """``(uid, name)`` of the SOP class, from the data set or else the file meta."""
    from pydicom.uid import UID

    uid = _text(ds.get("SOPClassUID")) or _text(
        getattr(ds.get("file_meta", None), "MediaStorageSOPClassUID", None)
    )
    if not uid:
        return "", "unknown SOP class"
    name = UID(uid).name
    return uid, name if name and name != uid else f"SOP class {uid}"


def _int(ds, key: str, default: int | None = None) -> int:
    value = ds.get(key, default)
    if value is None or value == "":
        if default is None:
            raise DatasetError(f"missing required attribute {key} of an image")
        return default
    try:
        return int(_text(value) if not isinstance(value, int) else value)
    except (TypeError, ValueError):
        raise DatasetError(f"bad {key} value {_text(value)!r}") from None


def _float_values(ds, key: str) -> list[float] | None:
    value = ds.get(key)
    if value is None or value == "":
        return None
    items = (
        list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    )
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        raise DatasetError(f"bad {key} value {_text(value)!r}: not a number") from None


def _check_header(
    ds, path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, allow_modalities: Iterable[str] = ()
) -> str:
    """Every check that needs no pixel data (see the module docstring); returns the syntax UID."""
    try:
        return _check_header_fields(ds, path, max_pixels, {m.upper() for m in allow_modalities})
    except DatasetError as exc:
        if exc.path is None:
            raise DatasetError(exc.reason, path) from None
        raise


def _pixel_keyword(ds) -> str | None:
    for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if key in ds:
            return key
    return None


def _check_header_fields(ds, path: Path, max_pixels: int, allowed: set[str]) -> str:
    sop_uid, sop_name = _sop_class(ds)
    pixel_key = _pixel_keyword(ds)
    modality = _text(ds.get("Modality")).upper() or _SOP_MODALITY.get(sop_uid, "")
    if pixel_key is None:
        image_like = "Image" in sop_name or "Rows" in ds or "BitsAllocated" in ds
        if image_like:
            raise DatasetError(
                f"no pixel data: the {sop_name} data set ends before its Pixel Data "
                f"(truncated or incomplete file, {os.stat(path).st_size:,} bytes)"
            )
        raise DatasetError(f"no pixel data: not an image object ({sop_name}, modality {modality or '?'})")
    if modality and modality not in RADIOGRAPH_MODALITIES:
        if modality not in allowed:
            raise DatasetError(
                f"modality {modality} ({sop_name}) is not a projection radiograph: the loader reads "
                f"{' and '.join(RADIOGRAPH_MODALITIES)}; allow_modalities=('{modality}',) "
                f"(--allow-modality {modality}) reads it anyway"
            )
        log.warning(
            "%s: modality %s (%s) read as a radiograph (allowed explicitly)", path, modality, sop_name
        )
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise DatasetError(
            f"multi-frame object ({frames} frames) is not supported; expected one 2-D radiograph"
        )
    samples = _int(ds, "SamplesPerPixel", 1) or 1
    photometric = _text(ds.get("PhotometricInterpretation")).upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DatasetError(
            f"colour or unsupported photometric interpretation {photometric or '?'}"
            f" (SamplesPerPixel={samples}); expected MONOCHROME1 or MONOCHROME2"
        )
    rows, cols, bits = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated")
    if rows < 1 or cols < 1:
        raise DatasetError(f"empty image: Rows={rows}, Columns={cols}")
    if bits not in (1, 8, 16, 32, 64):
        raise DatasetError(f"BitsAllocated={bits} is not 1, 8, 16, 32 or 64")
    pixels = rows * cols * samples * frames
    declared = math.ceil(pixels * bits / 8)
    if pixels > max_pixels:
        what = f"declared image {rows}x{cols}x{samples}x{frames} of {bits} bits ({declared / 2**20:,.0f} MiB)"
        raise DatasetError(too_large(what, pixels, max_pixels))
    if pixel_key == "PixelData":
        stored_bits = _int(ds, "BitsStored")
        if not 1 <= stored_bits <= bits:
            raise DatasetError(f"BitsStored={stored_bits} is not between 1 and BitsAllocated={bits}")
        if _int(ds, "PixelRepresentation") not in (0, 1):
            raise DatasetError(f"PixelRepresentation={_int(ds, 'PixelRepresentation')} is not 0 or 1")
        if "SamplesPerPixel" not in ds:
            raise DatasetError("missing required attribute SamplesPerPixel of an image")
    uid = _transfer_syntax(ds)
    if not uid.is_compressed or pixel_key != "PixelData":
        raw = ds.get_item(pixel_key)
        length = getattr(raw, "length", None)
        if length is None:
            length = len(ds[pixel_key].value or b"")
        if length == UNDEFINED_LENGTH:
            raise DatasetError(f"native (uncompressed) {pixel_key} with undefined length")
        if length < declared:
            raise DatasetError(
                f"{pixel_key} holds {length:,} bytes but the header declares {rows}x{cols} of {bits} bits "
                f"= {declared:,} bytes (truncated or inconsistent)"
            )
        if length >= 2 * declared + 2:  # a padding byte or a few are fine; twice the image is not
            raise DatasetError(
                f"{pixel_key} holds {length:,} bytes, far more than the {rows}x{cols} of {bits} bits "
                f"(= {declared:,} bytes) the header declares (inconsistent Rows/Columns/BitsAllocated)"
            )
    _check_value_attributes(ds)
    return str(uid)


def _transfer_syntax(ds):
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    value = _text(getattr(meta, "TransferSyntaxUID", None)) if meta is not None else ""
    if not value:
        raise DatasetError("no Transfer Syntax UID in the file meta information")
    uid = UID(value)
    try:
        valid = uid.is_transfer_syntax
    except ValueError:
        valid = False
    if not valid:
        raise DatasetError(f"invalid Transfer Syntax UID {value!r} in the file meta: not a transfer syntax")
    if uid.is_private:
        raise DatasetError(f"private transfer syntax {value!r} is not supported")
    if uid.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise DatasetError(f"unsupported transfer syntax {uid.name} ({uid})") from None
        if not decoder.is_available:
            missing = "; ".join(getattr(decoder, "missing_dependencies", [])) or "a plugin"
            raise DatasetError(
                f"transfer syntax {uid.name} needs a decoder plugin that is not installed ({missing}); "
                "install pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg"
            )
    return uid


def _check_value_attributes(ds) -> None:
    """Rescale and window attributes must be finite, the slope non-zero, the width positive."""
    for key in ("RescaleSlope", "RescaleIntercept"):
        values = _float_values(ds, key)
        if values is not None and not all(math.isfinite(v) for v in values):
            raise DatasetError(f"non-finite {key} {_text(ds.get(key))!r}")
    slope = _float_values(ds, "RescaleSlope")
    if slope is not None and slope[0] == 0:
        raise DatasetError("RescaleSlope is 0: every pixel would have the same value")
    if ds.get("VOILUTSequence"):
        return
    centre, width = _float_values(ds, "WindowCenter"), _float_values(ds, "WindowWidth")
    if centre is not None and width is not None:  # the first window is the one applied
        if not math.isfinite(centre[0]):
            raise DatasetError(f"non-finite WindowCenter {centre[0]}")
        if not math.isfinite(width[0]) or width[0] <= 0:
            raise DatasetError(f"WindowWidth {width[0]} is not a positive finite number")


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


def check_dicom_file(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, allow_modalities: Iterable[str] = ()
) -> None:
    """Header-only validity check (no pixel decode); raises :class:`DatasetError` only."""
    path = Path(path)
    with _quiet_pydicom():
        ds = _open(path)
        with _guard(path, "malformed DICOM header"):
            _check_header(ds, path, max_pixels=max_pixels, allow_modalities=allow_modalities)


def read_dicom(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, allow_modalities: Iterable[str] = ()
) -> DicomImage:
    """Read a CR/DX radiograph into [0, 1] (see the module docstring for the exact order and for
    what is refused); raises :class:`DatasetError` only."""
    path = Path(path)
    with _quiet_pydicom():
        return _read(path, ds=_open(path), max_pixels=max_pixels, allow_modalities=allow_modalities)


def _read(path: Path, ds, max_pixels: int, allow_modalities: Iterable[str]) -> DicomImage:
    with _guard(path, "malformed DICOM header"):
        uid = _check_header(ds, path, max_pixels=max_pixels, allow_modalities=allow_modalities)
    with _guard(path, "cannot decode pixel data"):
        stored = ds.pixel_array
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise DatasetError(f"decoded pixel data has shape {stored.shape}; expected one 2-D image", path)
    _check_finite(stored, path, "pixel values")
    with _guard(path, "bad modality/VOI LUT attributes"):
        arr = apply_luts(ds)(stored)
    pixels, windowed = arr
    _check_finite(pixels, path, "values after the modality/VOI LUT")
    span = float(pixels.max() - pixels.min()) if pixels.size else 0.0
    if not windowed and span < FLAT_RANGE:
        log.warning(
            "%s: no window and the pixels use only %.2f%% of the nominal value range: the image will "
            "look flat grey",
            path,
            100 * span,
        )
    with _guard(path, "malformed DICOM header"):
        return _finish(ds, pixels, uid)


def _finish(ds, pixels: np.ndarray, uid: str) -> DicomImage:
    photometric = _text(ds.get("PhotometricInterpretation")).upper()
    shape = _text(ds.get("PresentationLUTShape", "IDENTITY")).upper()
    invert = photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")
    if invert:
        pixels = 1.0 - pixels
    return DicomImage(
        pixels=pixels.astype(np.float32),
        spacing=_spacing(ds),
        photometric=photometric,
        inverted=invert,
        modality=_text(ds.get("Modality")) or None,
        transfer_syntax=uid,
    )


def _check_finite(arr: np.ndarray, path: Path, what: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise DatasetError(f"non-finite {what}: {nan:,} NaN, {inf:,} inf", path)


def apply_luts(ds):
    """The function ``stored -> (pixels in [0, 1] before inversion, windowed?)`` of steps 2-4."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    def run(stored: np.ndarray) -> tuple[np.ndarray, bool]:
        arr = apply_modality_lut(stored, ds)
        windowed = False
        if ds.get("VOILUTSequence"):
            if np.issubdtype(arr.dtype, np.floating):  # LUT inputs are integers by definition
                arr = np.rint(arr).astype(np.int64)
            arr = apply_voi_lut(arr, ds, prefer_lut=True)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
            windowed = True
        elif _pixel_keyword(ds) != "PixelData":  # float pixel data: no stored range; min-max
            lo, hi = float(np.min(arr)), float(np.max(arr))
        else:
            lo, hi = _range_after_modality(ds)
            if "WindowCenter" in ds and "WindowWidth" in ds:
                arr = apply_voi_lut(arr.astype(np.float64), ds, prefer_lut=False)
                windowed = True
        pixels = ((np.asarray(arr, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)).clip(0, 1)
        return pixels, windowed

    return run


class DicomDataset(FileDataset):
    """A folder of DICOM radiographs with an optional labels CSV (see the module docstring)."""

    source = "dicom"

    def __init__(self, root, *, allow_modalities: Iterable[str] = (), **kwargs):
        self.allow_modalities = tuple(str(m).strip().upper() for m in allow_modalities)
        super().__init__(root, **kwargs)

    def wanted(self, path: Path) -> bool:
        if path.suffix.lower() in DICOM_SUFFIXES:
            return True
        if path.suffix != "" or not path.is_file():
            return False
        try:
            with open(path, "rb") as fh:
                fh.seek(128)
                return fh.read(4) == b"DICM"
        except OSError:
            return False

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
        check_dicom_file(path, max_pixels=self.max_pixels, allow_modalities=self.allow_modalities)

    def read_file(self, path: Path) -> np.ndarray:
        return read_dicom(path, max_pixels=self.max_pixels, allow_modalities=self.allow_modalities).pixels

    def describe(self) -> dict:
        return super().describe() | {"allow_modalities": list(self.allow_modalities)}

    def spacing(self, i: int) -> tuple[float, float] | None:
        """Pixel spacing (row, column) in mm of the *stored* image ``i`` (header only), or None."""
        with _quiet_pydicom(), _guard(self.paths[i], "malformed DICOM header"):
            return _spacing(_open(self.paths[i]))


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
