"""Hostile input (issue 9): non-finite values, decompression bombs and absurd sizes, broken DICOM
headers, non-radiographs, paths out of the data root, files that fail only when decoded."""

import logging
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from datasets import open_dataset
from datasets.dicom import DicomDataset, check_dicom_file, new_dicom, read_dicom
from datasets.errors import DatasetError
from datasets.folder import FolderDataset, check_image_file, read_image_file

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
STORED = np.random.default_rng(0).integers(0, 4096, (32, 32)).astype(np.uint16)


def save(ds, path, **kw):
    ds.save_as(path, enforce_file_format=True, **kw)
    return path


def cr(stored=STORED, **attrs):
    ds = new_dicom(stored)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE
    ds.Modality = "CR"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def refused(path, pattern, reader=read_dicom, **kw):
    with pytest.raises(DatasetError) as info:
        reader(path, **kw)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    assert re.search(pattern, message), message
    return message


# -- non-finite values ----------------------------------------------------------------------------
def test_float_dicom_with_nan_or_inf_pixels_refused(tmp_path):
    for bad, name in ((np.nan, "nan.dcm"), (np.inf, "inf.dcm")):
        ds = new_dicom(np.zeros((4, 4), np.uint16))
        del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        values = np.ones((4, 4), np.float32)
        values[1, 2] = bad
        ds.BitsAllocated = 32
        ds.FloatPixelData = values.tobytes()
        refused(save(ds, tmp_path / name), r"non-finite pixel values: \d NaN, \d inf")
    ds = new_dicom(np.zeros((4, 4), np.uint16))
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.linspace(0, 1, 16, dtype=np.float32).tobytes()
    assert np.isfinite(read_dicom(save(ds, tmp_path / "fine.dcm")).pixels).all()


@pytest.mark.parametrize(
    ("attrs", "pattern"),
    [
        ({"RescaleSlope": float("nan"), "RescaleIntercept": 0}, "non-finite RescaleSlope"),
        ({"RescaleSlope": 1, "RescaleIntercept": float("inf")}, "non-finite RescaleIntercept"),
        ({"RescaleSlope": 0, "RescaleIntercept": 5}, "RescaleSlope is 0"),
        ({"WindowCenter": 2048, "WindowWidth": 0}, "WindowWidth 0.0 is not a positive finite number"),
        ({"WindowCenter": 2048, "WindowWidth": -100}, "WindowWidth -100.0 is not a positive"),
        ({"WindowCenter": 2048, "WindowWidth": float("nan")}, "WindowWidth nan is not a positive"),
        ({"WindowCenter": float("nan"), "WindowWidth": 100}, "non-finite WindowCenter"),
    ],
)
def test_bad_rescale_and_window_refused_from_the_header(tmp_path, attrs, pattern):
    path = save(cr(**attrs), tmp_path / "x.dcm")
    refused(path, pattern, reader=check_dicom_file)
    with pytest.raises(DatasetError, match=pattern):
        open_dataset("dicom", data_root=tmp_path, split="all").tensors()
    ds = open_dataset("dicom", data_root=tmp_path, split="all", skip_bad=True)
    assert len(ds) == 0 and len(ds.skipped) == 1 and pattern.split()[0] in ds.skipped[0][1]


def test_float_image_mode_f_with_nan_refused(tmp_path):
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "ok.png", format="TIFF")  # PIL opens by content
    assert read_image_file(tmp_path / "ok.png").max() == 1.0
    values[2, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "bad.png", format="TIFF")
    refused(
        tmp_path / "bad.png",
        r"non-finite pixel values: 1 NaN, 0 inf in a float \(mode F\) image",
        read_image_file,
    )


def test_flat_grey_without_window_warns(tmp_path, caplog):
    flat = save(
        cr(np.full((16, 16), 1000, np.uint16) + np.eye(16, dtype=np.uint16) * 20), tmp_path / "flat.dcm"
    )
    with caplog.at_level(logging.WARNING, logger="datasets"):
        read_dicom(flat)
    assert any("flat.dcm" in r.getMessage() and "flat grey" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datasets"):
        read_dicom(save(cr(), tmp_path / "full.dcm"))
        read_dicom(
            save(
                cr(np.full((16, 16), 1000, np.uint16), WindowCenter=1000, WindowWidth=40), tmp_path / "w.dcm"
            )
        )
    assert not any("flat grey" in r.getMessage() for r in caplog.records)


# -- decompression bombs and absurd sizes -----------------------------------------------------------
def png_bomb(path, side=20000):
    """A 1-bit all-black PNG of side x side written row by row (never held in memory): ~48 KB."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_png_bomb_is_a_one_line_error_and_skipped(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    bomb = png_bomb(root / "bomb.png")
    assert bomb.stat().st_size < 100_000
    Image.new("L", (8, 8), 100).save(root / "ok.png")
    (root / "labels.csv").write_text("image,sick\nbomb.png,1\nok.png,0\n")
    for reader in (read_image_file, check_image_file):
        refused(
            bomb, r"declared image size = 400\.0 Mpx exceeds max_pixels=67,108,864 .*--max-pixels", reader
        )
    with pytest.raises(DatasetError, match="bomb.png: declared image size"):
        FolderDataset(root, split="all", size=8).tensors()
    ds = FolderDataset(root, split="all", size=8, skip_bad=True)
    assert ds.ids == ["ok.png"] and "max_pixels" in ds.skipped[0][1]


def test_moderate_pil_bomb_against_a_lower_cap(tmp_path):
    path = tmp_path / "big.png"
    Image.new("1", (3000, 2500)).save(path)  # 7.5 Mpx, a few KB
    refused(
        path,
        r"declared image 3000x2500 = 7\.5 Mpx exceeds max_pixels=4,000,000",
        read_image_file,
        max_pixels=4_000_000,
    )
    assert read_image_file(path, max_pixels=8_000_000).shape == (2500, 3000)
    # a raised cap above PIL's own limit still reads (PIL's limit is raised with it)
    limit = Image.MAX_IMAGE_PIXELS
    assert read_image_file(path, max_pixels=300_000_000).shape == (2500, 3000)
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's global limit is raised for the open only


def test_large_jpeg_decoded_at_reduced_size(tmp_path):
    path = tmp_path / "big.jpg"
    grad = np.tile(np.linspace(0, 255, 800, dtype=np.uint8), (600, 1))
    Image.fromarray(grad, mode="L").save(path, quality=95)
    full = read_image_file(path)
    small = read_image_file(path, size=64)
    assert full.shape == (600, 800) and small.shape == (75, 100)  # 1/8 scale: both sides still >= 64
    assert np.abs(small.mean() - full.mean()) < 0.01
    assert read_image_file(path, size=400).shape == (600, 800)  # under 2x: full decode


def rle_bomb(path, rows=60000, cols=60000):
    """An RLE DICOM whose header claims rows x cols while holding a few bytes (never decodable)."""
    ds = cr(np.zeros((2, 2), np.uint16))
    ds.Rows, ds.Columns = rows, cols
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def test_dicom_bomb_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    import pydicom.dataset

    path = rle_bomb(tmp_path / "bomb.dcm")
    assert path.stat().st_size < 2000

    def never(self):
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(never))
    message = refused(
        path, r"declared image 60000x60000x1x1 of 16 bits \(6,866 MiB\) = 3,600\.0 Mpx exceeds max_pixels"
    )
    assert "--max-pixels" in message
    refused(rle_bomb(tmp_path / "b2.dcm", 20000, 20000), "20000x20000.*exceeds max_pixels", check_dicom_file)
    ds = open_dataset("dicom", data_root=tmp_path, split="all", skip_bad=True)
    assert len(ds) == 0 and len(ds.skipped) == 2


def test_native_pixel_data_shorter_than_declared(tmp_path):
    ds = cr(np.zeros((4, 4), np.uint16))
    ds.Rows, ds.Columns = 100, 100
    refused(
        save(ds, tmp_path / "short.dcm"),
        r"PixelData holds 32 bytes but the header declares 100x100 of 16 bits = 20,000",
    )
    ds = cr(np.zeros((64, 64), np.uint16))
    ds.Rows, ds.Columns = 8, 8
    refused(save(ds, tmp_path / "long.dcm"), r"PixelData holds 8,192 bytes, far more than the 8x8 of 16 bits")


# -- DICOM headers ----------------------------------------------------------------------------------
def test_invalid_transfer_syntax_uid(tmp_path):
    ds = cr()
    ds.file_meta.TransferSyntaxUID = "1.2.3"
    path = save(ds, tmp_path / "ts.dcm", implicit_vr=False, little_endian=True)
    refused(path, r"invalid Transfer Syntax UID '1\.2\.3' in the file meta: not a transfer syntax")
    refused(path, "invalid Transfer Syntax UID", check_dicom_file)
    ds = open_dataset("dicom", data_root=tmp_path, split="all", skip_bad=True)
    assert len(ds) == 0 and "Transfer Syntax" in ds.skipped[0][1]


def test_multi_valued_sop_class_without_pixel_data(tmp_path):
    ds = cr()
    del ds.PixelData, ds.Rows, ds.Columns, ds.BitsAllocated
    ds.SOPClassUID = ["1.2.840.10008.5.1.4.1.1.88.11", "1.2.3"]
    refused(save(ds, tmp_path / "multi.dcm"), r"no pixel data: not an image object \(Basic Text SR Storage")


def test_unknown_vr_is_a_dataset_error(tmp_path):
    path = save(cr(), tmp_path / "vr.dcm")
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality, explicit VR CS
    raw[at + 4 : at + 6] = b"ZZ"
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="vr.dcm: "):
        read_dicom(path)


def test_cut_cr_header_says_truncated(tmp_path):
    path = save(cr(), tmp_path / "full.dcm")
    raw = path.read_bytes()
    pixel_at = raw.index(b"\xe0\x7f\x10\x00")
    messages = set()
    for cut in (132, 200, 340, 400, pixel_at, pixel_at + 6, len(raw) - 100):
        cut_path = tmp_path / f"cut{cut}.dcm"
        cut_path.write_bytes(raw[:cut])
        message = refused(cut_path, "truncated")
        assert "not an image object" not in message
        messages.add(message.split(": ", 1)[1].split(" ")[0:3].__str__())
    assert len(messages) >= 2  # several distinct, specific reasons


def test_short_jpeg2000_file_says_truncated(tmp_path):
    ds = cr()
    ds.compress(JPEG2000Lossless)
    raw = save(ds, tmp_path / "j2k.dcm").read_bytes()
    for cut in (500, 900, len(raw) // 2, len(raw) - 10):
        path = tmp_path / f"short{cut}.dcm"
        path.write_bytes(raw[:cut])
        message = refused(path, "truncated")
        assert "unknown SOP class" not in message


def test_no_part10_header(tmp_path):
    ds = cr()
    path = tmp_path / "raw.dcm"
    del ds.file_meta
    ds.save_as(path, implicit_vr=True, little_endian=True)  # a bare data set: no preamble, no meta
    refused(path, r"not a DICOM file: no DICOM Part-10 header \(missing 'DICM' preamble")
    assert "force=True" not in str(pytest.raises(DatasetError, read_dicom, path).value)


# -- files that fail only when decoded, with and without skip_bad ---------------------------------
@pytest.fixture
def decode_failures(tmp_path):
    """Four good DICOMs and one whose JPEG 2000 code stream is corrupt (its header is fine)."""
    root = tmp_path / "dcm"
    root.mkdir()
    for i in range(4):
        save(cr(STORED + i), root / f"good{i}.dcm")
    ds = cr()
    ds.compress(JPEG2000Lossless)
    raw = bytearray(save(ds, root / "broken.dcm").read_bytes())
    start = raw.index(b"\xff\x4f\xff\x51")  # the J2K code stream: SOC + SIZ markers
    raw[start : start + 40] = b"\x00" * 40
    (root / "broken.dcm").write_bytes(bytes(raw))
    check_dicom_file(root / "broken.dcm")  # passes the header check
    return root


def test_decode_failure_raises_naming_the_file_without_skip_bad(decode_failures):
    ds = DicomDataset(decode_failures, split="all", size=8)
    with pytest.raises(DatasetError, match=r"broken\.dcm: cannot decode pixel data"):
        ds.tensors()
    with pytest.raises(DatasetError, match=r"broken\.dcm: cannot decode pixel data"):
        ds[ds.ids.index("broken.dcm")]


def test_decode_failure_skipped_with_skip_bad(decode_failures):
    ds = DicomDataset(decode_failures, split="all", size=8, skip_bad=True)
    assert len(ds) == 5 and ds.skipped == []  # the header check passed
    bad = ds.ids.index("broken.dcm")
    item = ds[bad]  # replaced by the next good item, deterministically
    assert item["idx"] == ds.ids[(bad + 1) % 5] and torch.equal(item["img"], ds[(bad + 1) % 5]["img"])
    assert len(ds.skipped) == 1 and "cannot decode" in ds.skipped[0][1]
    assert ds[bad]["idx"] == item["idx"] and len(ds.skipped) == 1  # recorded once
    batches = list(torch.utils.data.DataLoader(ds, batch_size=2))
    assert sum(len(b["idx"]) for b in batches) == 5 and "broken.dcm" not in sum(
        (b["idx"] for b in batches), []
    )
    images, labels = ds.tensors()  # the bad file leaves the dataset
    assert (
        images.shape == (4, 1, 8, 8) and labels.shape[0] == 4 and "broken.dcm" not in ds.ids and len(ds) == 4
    )
    assert len(ds.skipped) == 1  # met twice, counted once


def test_truncated_jpeg_skipped_at_decode_time(tmp_path):
    root = tmp_path / "jpg"
    root.mkdir()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8)
    for name in ("a", "b", "c"):
        Image.fromarray(noise, mode="L").save(root / f"{name}.jpg", quality=95)
    raw = (root / "b.jpg").read_bytes()
    (root / "b.jpg").write_bytes(raw[: len(raw) * 2 // 3])  # cut inside the scan data
    check_image_file(root / "b.jpg")  # the header is intact: only decoding fails
    (root / "labels.csv").write_text("image,x\na.jpg,1\nb.jpg,0\nc.jpg,1\n")
    with pytest.raises(DatasetError, match=r"b\.jpg: unreadable or corrupt image"):
        FolderDataset(root, split="all", size=16).tensors()
    ds = FolderDataset(root, split="all", size=16, skip_bad=True)
    assert len(ds) == 3 and ds.skipped == []
    assert [ds[i]["idx"] for i in range(3)] == ["a.jpg", "c.jpg", "c.jpg"]  # b replaced by the next good
    images, labels = ds.tensors()
    assert ds.ids == ["a.jpg", "c.jpg"] and images.shape[0] == 2 and labels[:, 0].tolist() == [1, 1]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("b.jpg")  # counted once


# -- non-radiographs --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("modality", "sop"),
    [
        ("CT", "1.2.840.10008.5.1.4.1.1.2"),
        ("MR", "1.2.840.10008.5.1.4.1.1.4"),
        ("US", "1.2.840.10008.5.1.4.1.1.6.1"),
        ("NM", "1.2.840.10008.5.1.4.1.1.20"),
        ("SEG", "1.2.840.10008.5.1.4.1.1.66.4"),
        ("RTDOSE", "1.2.840.10008.5.1.4.1.1.481.2"),
        ("MG", "1.2.840.10008.5.1.4.1.1.1.2"),
    ],
)
def test_non_radiographs_refused_or_allowed_explicitly(tmp_path, caplog, modality, sop):
    ds = cr()
    ds.Modality = modality
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop
    path = save(ds, tmp_path / "x.dcm")
    message = refused(path, f"modality {modality} \\(.*Storage.*\\) is not a projection radiograph")
    assert f"--allow-modality {modality}" in message
    with caplog.at_level(logging.WARNING, logger="datasets"):
        assert read_dicom(path, allow_modalities=(modality.lower(),)).pixels.shape == STORED.shape
    assert any(f"modality {modality}" in r.getMessage() and "x.dcm" in r.getMessage() for r in caplog.records)
    assert len(open_dataset("dicom", data_root=tmp_path, split="all", allow_modalities=[modality])) == 1
    del ds.Modality  # the SOP class alone says what it is
    refused(save(ds, tmp_path / "x.dcm"), f"modality {modality} ")


# -- paths ------------------------------------------------------------------------------------------
@pytest.fixture
def outside(tmp_path):
    root, away = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    away.mkdir()
    for folder in (root, away):
        Image.new("L", (8, 8), 50).save(folder / "x.png")
    Image.new("L", (8, 8), 200).save(away / "secret.png")
    return root, away


def test_csv_key_out_of_the_root_refused(outside):
    root, _ = outside
    for key in ("../../outside/x.png", "../outside/x.png", "/etc/x.png", "sub/../../x.png"):
        (root / "labels.csv").write_text(f"image,a\n{key},1\n")
        with pytest.raises(
            DatasetError, match=r"labels\.csv: row 2: image path .* points outside the data root"
        ):
            FolderDataset(root, split="all")
        ds = FolderDataset(root, split="all", skip_bad=True)
        assert ds.ids == []  # not matched by basename to root/x.png (which has no row: skipped too)
        assert len(ds.skipped) == 2


def test_symlinks_out_of_the_root_refused_unless_allowed(outside):
    root, away = outside
    (root / "link.png").symlink_to(away / "secret.png")
    (root / "labels.csv").write_text("image,a\nx.png,0\nlink.png,1\n")
    with pytest.raises(
        DatasetError, match=r"link\.png: symbolic link to a file outside the data root .*allow-symlinks"
    ):
        FolderDataset(root, split="all")
    ds = FolderDataset(root, split="all", skip_bad=True)
    assert ds.ids == ["x.png"]
    allowed = FolderDataset(root, split="all", allow_symlinks=True, size=8)
    assert allowed.ids == ["x.png", "link.png"] and allowed[1]["img"].mean() > 0.7


def test_linked_folders_out_of_the_root(outside):
    root, away = outside
    (root / "more").symlink_to(away, target_is_directory=True)
    (root / "labels.csv").write_text("image,a\nx.png,0\nmore/secret.png,1\nmore/x.png,0\n")
    with pytest.raises(DatasetError, match=r"more: symbolic link to a folder outside the data root"):
        FolderDataset(root, split="all")
    allowed = FolderDataset(root, split="all", allow_symlinks=True)
    assert "more/secret.png" in allowed.ids
    (away / "loop").symlink_to(root, target_is_directory=True)  # a cycle: each real folder once
    assert len(FolderDataset(root, split="all", allow_symlinks=True, skip_bad=True)) == 3


def test_symlink_inside_the_root_is_fine(outside):
    root, _ = outside
    (root / "sub" / "y.png").symlink_to(root / "x.png")
    (root / "labels.csv").write_text("image,a\nx.png,0\nsub/y.png,1\n")
    assert FolderDataset(root, split="all").ids == ["x.png", "sub/y.png"]


def test_nih_linked_images_folder(tmp_path):
    root, away = tmp_path / "nih", tmp_path / "disk"
    root.mkdir()
    away.mkdir()
    Image.new("L", (8, 8)).save(away / "00000001_000.png")
    (root / "images").symlink_to(away, target_is_directory=True)
    (root / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Patient ID\n00000001_000.png,No Finding,1\n"
    )
    with pytest.raises(DatasetError, match=r"images: symbolic link to a folder outside the data root"):
        open_dataset("nih", data_root=root, split="all")
    assert len(open_dataset("nih", data_root=root, split="all", allow_symlinks=True)) == 1


def test_max_pixels_option_validated():
    with pytest.raises(DatasetError, match="max_pixels must be >= 1"):
        open_dataset("folder", data_root=".", max_pixels=0)
