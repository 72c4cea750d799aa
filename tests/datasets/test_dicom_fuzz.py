"""Fuzzing the DICOM loader (issue 9): mutated real headers must give a DatasetError and nothing else.

Seed files are valid CR/DX radiographs written here with pydicom (native explicit and implicit VR,
RLE, JPEG 2000); a mutation flips bytes, truncates, inserts bytes, rewrites an element's tag or
its VR. :func:`read_dicom` (header checks, then decode and LUTs) may succeed or raise
:class:`DatasetError`; any other exception fails the test. ``fuzz_counts`` (also run as the slow
test, ``-s`` prints the message families) fuzzes with a seeded numpy generator instead.
"""

from __future__ import annotations

import collections
import functools
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless, RLELossless

from datasets.dicom import check_dicom_file, new_dicom, read_dicom
from datasets.errors import DatasetError

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"


@functools.cache
def seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (syntax, implicit) in enumerate(
            [(None, False), (None, True), (RLELossless, False), (JPEG2000Lossless, False)]
        ):
            ds = new_dicom(
                rng.integers(0, 4096, (32, 32)).astype(np.uint16),
                photometric=("MONOCHROME2", "MONOCHROME1")[k % 2],
            )
            if k % 2 == 0:
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE
                ds.Modality = "CR"
            ds.RescaleSlope, ds.RescaleIntercept = 1, 0
            ds.WindowCenter, ds.WindowWidth = 2048, 4096
            ds.PixelSpacing = [0.2, 0.2]
            if syntax is not None:
                ds.compress(syntax)
            path = Path(tmp) / f"seed{k}.dcm"
            if implicit:
                ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
            ds.save_as(path, enforce_file_format=True)
            out.append(path.read_bytes())
    return out


N_SEEDS = 4


def _tag_offsets(raw: bytes) -> list[int]:
    """Offsets of top-level-looking element tags after the preamble (group 0x0002-0x7FE0)."""
    found = []
    for m in re.finditer(rb"[\x02\x08\x10\x18\x20\x28\xe0][\x00\x7f]", raw[132:]):
        found.append(132 + m.start())
    return found


def mutate(raw: bytes, ops) -> bytes:
    data = bytearray(raw)
    tags = _tag_offsets(raw)
    for op, a, b in ops:
        if not data:
            break
        if op == "flip":
            data[a % len(data)] = b % 256
        elif op == "truncate":
            del data[a % len(data) :]
        elif op == "insert":
            at = a % len(data)
            data[at:at] = bytes([b % 256]) * (1 + b % 7)
        elif op == "tag" and tags:
            at = tags[a % len(tags)]
            data[at : at + 4] = struct.pack("<I", b & 0xFFFFFFFF)
        elif op == "vr" and tags:
            at = tags[a % len(tags)] + 4
            data[at : at + 2] = bytes([65 + b % 26, 65 + (b // 26) % 26])
        elif op == "length" and tags:
            at = tags[a % len(tags)] + 6
            data[at : at + 2] = struct.pack("<H", b & 0xFFFF)
    return bytes(data)


FAMILIES = (  # (family, pattern of the reason), first match wins
    ("truncated file", r"^truncated|ends before its Pixel Data|file ends inside"),
    ("no Part-10 header", r"no DICOM Part-10 header"),
    ("not a DICOM file (other)", r"^not a DICOM file"),
    ("not an image object", r"not an image object"),
    ("transfer syntax", r"(?i)transfer syntax"),
    ("modality not a radiograph", r"^modality"),
    ("multi-frame", r"^multi-frame"),
    ("colour / photometric", r"^colour"),
    (
        "declared size or bits",
        r"exceeds max_pixels|^BitsAllocated|^BitsStored|^PixelRepresentation|^empty image",
    ),
    ("pixel data shorter than declared", r"holds .* bytes but the header declares"),
    ("missing or bad attribute", r"^missing required|^bad \w+ value"),
    ("non-finite / window / rescale", r"non-finite|WindowWidth|RescaleSlope"),
    ("unknown VR or bad element length", r"value representation"),
    ("malformed compressed pixel data", r"encapsulated"),
    ("cannot decode pixel data (other)", r"^cannot decode"),
    ("malformed or unreadable header (other)", r"^(malformed|unreadable)"),
)


def family(message: str) -> str:
    """The family of a DatasetError message (see :data:`FAMILIES`)."""
    reason = message.split(": ", 1)[1] if ": " in message else message
    return next((name for name, pattern in FAMILIES if re.search(pattern, reason)), "other: " + reason[:60])


def load(raw: bytes, path: Path) -> str:
    """``"ok"`` or the family of the DatasetError; anything else propagates."""
    path.write_bytes(raw)
    try:
        check_dicom_file(path)
        image = read_dicom(path)
    except DatasetError as exc:
        assert "\n" not in str(exc) and path.name in str(exc)
        return family(str(exc))
    assert image.pixels.ndim == 2 and np.isfinite(image.pixels).all()
    assert 0 <= image.pixels.min() and image.pixels.max() <= 1
    return "ok"


OPS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "tag", "vr", "length"]),
        st.integers(0, 2**16),
        st.integers(0, 2**32 - 1),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, N_SEEDS - 1), ops=OPS)
def test_mutated_headers_only_raise_dataset_error(seed, ops):
    with tempfile.TemporaryDirectory() as tmp:
        event(load(mutate(seeds()[seed], ops), Path(tmp) / "fuzz.dcm"))  # --hypothesis-show-statistics


def test_seed_files_read():
    with tempfile.TemporaryDirectory() as tmp:
        assert [load(raw, Path(tmp) / "seed.dcm") for raw in seeds()] == ["ok"] * N_SEEDS


def fuzz_counts(n: int, seed: int = 0) -> collections.Counter:
    """Run ``n`` seeded random mutations; count outcomes by family (raises on any other error)."""
    rng = np.random.default_rng(seed)
    kinds = ["flip", "truncate", "insert", "tag", "vr", "length"]
    counts: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(n):
            raw = seeds()[rng.integers(N_SEEDS)]
            ops = [
                (kinds[rng.integers(len(kinds))], int(rng.integers(2**16)), int(rng.integers(2**32)))
                for _ in range(rng.integers(1, 5))
            ]
            counts[load(mutate(raw, ops), Path(tmp) / "fuzz.dcm")] += 1
    return counts


@pytest.mark.slow
def test_fuzz_counts_report():
    counts = fuzz_counts(2000)
    for name, k in counts.most_common():
        print(f"{k:5d}  {name}")
    assert sum(counts.values()) == 2000 and len(counts) > 5
    assert not [name for name in counts if name.startswith("other")]
