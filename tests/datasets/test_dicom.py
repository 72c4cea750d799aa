"""DICOM reading against hand-computed values; files are written here with pydicom."""

import warnings

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from datasets import open_dataset
from datasets.dicom import DicomDataset, check_dicom_file, new_dicom, read_dicom
from datasets.errors import DatasetError

STORED = np.array([[0, 1000, 1800], [2048, 2560, 4095]], dtype=np.uint16)


def write(
    tmp_path, name, stored=STORED, *, bits=12, photometric="MONOCHROME2", signed=False, compress=None, **attrs
):
    ds = new_dicom(stored, bits_stored=bits, photometric=photometric, signed=signed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    if compress is not None:
        ds.compress(compress)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def pixels(path):
    return read_dicom(path).pixels.astype(np.float64)


# (description, write kwargs, stored values, expected output in [0, 1])
CASES = [
    ("monochrome2 12 bit", {}, STORED, STORED / 4095),
    ("monochrome1 inverted once", {"photometric": "MONOCHROME1"}, STORED, 1 - STORED / 4095),
    (
        "rescale 0.5 x + 10 on 8 bits: range [10, 137.5]",
        {"bits": 8, "RescaleSlope": 0.5, "RescaleIntercept": 10},
        np.array([[0, 100], [200, 255]]),
        (np.array([[0, 100], [200, 255]]) * 0.5) / 127.5,
    ),
    (
        "signed 12 bit: range [-2048, 2047]",
        {"signed": True},
        np.array([[-2048, 0], [1000, 2047]]),
        (np.array([[-2048, 0], [1000, 2047]]) + 2048) / 4095,
    ),
    (
        "window LINEAR c=2048 w=1024: clip((x - 2047.5) / 1023 + 0.5)",
        {"WindowCenter": 2048, "WindowWidth": 1024},
        STORED,
        np.clip((STORED - 2047.5) / 1023 + 0.5, 0, 1),
    ),
    (
        "rescale 2x - 1024 then window c=0 w=400",
        {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 0, "WindowWidth": 400},
        np.array([[0, 500], [512, 700]]),
        np.clip((np.array([[0, 500], [512, 700]]) * 2 - 1024 + 0.5) / 399 + 0.5, 0, 1),
    ),
    (
        "window LINEAR_EXACT c=1000 w=500: clip((x - 1000) / 500 + 0.5)",
        {"WindowCenter": 1000, "WindowWidth": 500, "VOILUTFunction": "LINEAR_EXACT"},
        np.array([[700, 800], [1000, 1300]]),
        np.clip((np.array([[700, 800], [1000, 1300]]) - 1000) / 500 + 0.5, 0, 1),
    ),
    (
        "monochrome2 + presentation LUT shape INVERSE",
        {"PresentationLUTShape": "INVERSE"},
        STORED,
        1 - STORED / 4095,
    ),
    (
        "monochrome1 + INVERSE still inverted exactly once",
        {"photometric": "MONOCHROME1", "PresentationLUTShape": "INVERSE"},
        STORED,
        1 - STORED / 4095,
    ),
    (
        "monochrome1 with a window: window first, then invert",
        {"photometric": "MONOCHROME1", "WindowCenter": 2048, "WindowWidth": 1024},
        STORED,
        1 - np.clip((STORED - 2047.5) / 1023 + 0.5, 0, 1),
    ),
]


@pytest.mark.parametrize(("desc", "kwargs", "stored", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lut_pipeline_matches_hand_computed_values(tmp_path, desc, kwargs, stored, expected):
    path = write(tmp_path, "x.dcm", np.asarray(stored), **kwargs)
    np.testing.assert_allclose(pixels(path), expected, atol=1e-6)


def test_voi_lut_sequence_preferred_over_window(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first input value 0, 8-bit output
    item.add_new(0x00283006, "US", [0, 64, 128, 255])  # LUT Data
    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    path = write(tmp_path, "lut.dcm", stored, bits=8, VOILUTSequence=[item], WindowCenter=1, WindowWidth=2)
    np.testing.assert_allclose(pixels(path), np.array([[0, 64], [128, 255]]) / 255, atol=1e-6)
    path = write(tmp_path, "lut1.dcm", stored, bits=8, photometric="MONOCHROME1", VOILUTSequence=[item])
    np.testing.assert_allclose(pixels(path), 1 - np.array([[0, 64], [128, 255]]) / 255, atol=1e-6)


@pytest.mark.parametrize(
    ("attrs", "spacing"),
    [
        ({"PixelSpacing": [0.2, 0.3]}, (0.2, 0.3)),
        ({"PixelSpacing": [0.0, 0.0], "ImagerPixelSpacing": [0.15, 0.16]}, (0.15, 0.16)),
        ({"ImagerPixelSpacing": [0.139, 0.139]}, (0.139, 0.139)),
        ({"PixelSpacing": [0.0, 0.0]}, None),
        ({}, None),
    ],
)
def test_pixel_spacing(tmp_path, attrs, spacing):
    image = read_dicom(write(tmp_path, "s.dcm", **attrs))
    assert image.spacing == (pytest.approx(spacing) if spacing else None)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_transfer_syntaxes(tmp_path, syntax):
    stored = np.random.default_rng(0).integers(0, 4096, (64, 48)).astype(np.uint16)
    plain = pixels(write(tmp_path, "plain.dcm", stored))
    path = write(tmp_path, "packed.dcm", stored, compress=syntax)
    image = read_dicom(path)
    assert image.transfer_syntax == str(syntax)
    np.testing.assert_array_equal(image.pixels, plain.astype(np.float32))


def test_missing_decoder_plugin_is_a_clear_error(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    path = write(tmp_path, "j2k.dcm", np.zeros((64, 64), np.uint16), compress=JPEG2000Lossless)
    monkeypatch.setattr(type(get_decoder(JPEG2000Lossless)), "is_available", property(lambda self: False))
    with pytest.raises(DatasetError, match=r"j2k\.dcm.*needs a decoder plugin"):
        read_dicom(path)


def test_multi_frame_refused(tmp_path):
    ds = new_dicom(STORED)
    ds.NumberOfFrames = 2
    ds.PixelData = np.concatenate([STORED, STORED]).tobytes()
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DatasetError, match=r"cine\.dcm: multi-frame object \(2 frames\)"):
        read_dicom(path)


def test_non_image_object_refused(tmp_path):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta = meta
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(
        DatasetError, match=r"report\.dcm: no pixel data: not an image object \(Basic Text SR"
    ):
        read_dicom(path)


def test_a_damaged_header_value_is_quoted_on_one_line(tmp_path):
    # a SOP Class UID with a line break inside (a mutation the fuzz test found) stays one line
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1  \nX"
    ds.SOPInstanceUID = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta = meta
    path = tmp_path / "damaged.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID it writes
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DatasetError) as info:
        read_dicom(path)
    assert "\n" not in str(info.value) and "damaged.dcm" in str(info.value)


def test_colour_refused(tmp_path):
    ds = new_dicom(STORED)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    path = tmp_path / "rgb.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DatasetError, match="expected MONOCHROME1 or MONOCHROME2"):
        check_dicom_file(path)


def test_not_dicom_and_corrupt_files(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a dicom file" * 20)
    with pytest.raises(DatasetError, match=r"junk\.dcm: not a DICOM file"):
        read_dicom(junk)
    good = write(tmp_path, "cut.dcm", np.zeros((64, 64), np.uint16))
    good.write_bytes(good.read_bytes()[:-3000])  # truncated pixel data
    with pytest.raises(
        DatasetError, match=r"cut\.dcm: truncated file: PixelData \(7FE0,0010\) declares 8,192"
    ):
        read_dicom(good)
    with pytest.raises(DatasetError, match="not found"):
        read_dicom(tmp_path / "missing.dcm")


@pytest.fixture
def dicom_folder(tmp_path):
    root = tmp_path / "dicoms"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(["a.dcm", "b.dcm", "sub/c.dcm", "d.dcm"]):
        write(
            root,
            name,
            rng.integers(0, 4096, (40, 30)).astype(np.uint16),
            photometric=("MONOCHROME1", "MONOCHROME2")[i % 2],
        )
    (root / "labels.csv").write_text("file,Mass,Effusion\na.dcm,1,0\nb.dcm,0,\nsub/c.dcm,0,1\nd,1,1\n")
    return root


def test_dicom_folder_dataset(dicom_folder):
    ds = DicomDataset(dicom_folder, split="all", size=16)
    assert ds.labels == ("Mass", "Effusion") and len(ds) == 4
    item = ds[1]
    assert item["idx"] == "b.dcm" and item["img"].shape == (1, 16, 16)
    assert item["lab"][0] == 0 and torch.isnan(item["lab"][1])
    images, labels = ds.tensors()
    assert images.shape == (4, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    # the crop is centred: 40 x 30 -> 30 x 30 -> 16 x 16
    assert ds.spacing(0) is None
    d = ds.describe()
    assert d["source"] == "dicom" and d["n"] == 4 and d["labels"] == ["Mass", "Effusion"]


def test_dicom_folder_without_csv_has_unknown_labels(dicom_folder):
    (dicom_folder / "labels.csv").unlink()
    ds = open_dataset("dicom", data_root=dicom_folder, split="all", size=16)
    assert len(ds) == 4 and torch.isnan(ds[0]["lab"]).all() and len(ds.labels) == 15


def test_dicom_folder_bad_file(dicom_folder):
    ds = new_dicom(STORED)
    ds.NumberOfFrames = 2
    ds.PixelData = np.concatenate([STORED, STORED]).tobytes()
    ds.save_as(dicom_folder / "e.dcm", enforce_file_format=True)
    with open(dicom_folder / "labels.csv", "a") as fh:
        fh.write("e.dcm,0,0\n")
    with pytest.raises(DatasetError, match=r"e\.dcm: multi-frame"):
        DicomDataset(dicom_folder, split="all", size=16, validate=True)
    lazy = DicomDataset(dicom_folder, split="all", size=16)  # found on first load without skip_bad
    with pytest.raises(DatasetError, match=r"e\.dcm: multi-frame"):
        lazy[lazy.ids.index("e.dcm")]
    ds = DicomDataset(dicom_folder, split="all", size=16, skip_bad=True)
    assert len(ds) == 4 and len(ds.skipped) == 1 and "multi-frame" in ds.skipped[0][1]
