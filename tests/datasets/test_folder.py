"""Image-folder datasets: any label columns, PNG/JPEG/16-bit, matching rules, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import open_dataset
from datasets.errors import DatasetError
from datasets.folder import FolderDataset, read_image_file


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pets"
    (root / "more").mkdir(parents=True)
    Image.fromarray(np.full((10, 14), 51, np.uint8), mode="L").save(root / "a.png")
    Image.fromarray(np.full((12, 12, 3), 255, np.uint8), mode="RGB").save(root / "b.jpg", quality=100)
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(root / "more" / "c.png")  # 16-bit
    Image.fromarray(np.zeros((9, 9), np.uint8), mode="L").save(root / "more" / "d.jpeg")
    (root / "labels.csv").write_text(
        "image,cat,dog,patient_id\na.png,1,0,p1\nb.jpg,0,,p2\nmore/c.png,1,1,p3\nd,0,0,p4\n"
    )
    return root


def test_any_label_columns(folder):
    ds = FolderDataset(folder, split="all", size=8)
    assert ds.labels == ("cat", "dog") and len(ds) == 4
    assert ds.ids == ["a.png", "b.jpg", "more/c.png", "d"]
    labels = ds.tensors()[1]
    assert labels[0].tolist() == [1, 0] and labels[1, 0] == 0 and torch.isnan(labels[1, 1])


def test_pixel_values(folder):
    ds = FolderDataset(folder, split="all", size=8)
    assert torch.allclose(ds[0]["img"], torch.full((1, 8, 8), 0.2))  # 51 / 255, centre crop 10x14 -> 10x10
    assert torch.allclose(ds[1]["img"], torch.ones(1, 8, 8), atol=0.01)  # colour -> luminance
    assert torch.equal(ds[2]["img"], torch.ones(1, 8, 8))  # 16-bit / 65535
    assert ds[3]["img"].max() < 0.02


def test_seeded_split_by_patient(folder):
    parts = [FolderDataset(folder, split=s, size=8, seed=1).ids for s in ("train", "val", "test")]
    assert sorted(sum(parts, [])) == sorted(FolderDataset(folder, split="all").ids)


def test_bad_label_value(folder):
    csv = folder / "labels.csv"
    csv.write_text(csv.read_text().replace("a.png,1,0", "a.png,yes,0"))
    with pytest.raises(DatasetError, match=r"labels\.csv: row 2 \(a\.png\): label 'cat' has value 'yes'"):
        FolderDataset(folder, split="all")
    ds = FolderDataset(folder, split="all", skip_bad=True)
    # the row is skipped, and its image with it: one bad input, counted once
    assert len(ds) == 3 and len(ds.skipped) == 1 and "a.png" not in ds.ids


def test_bad_row_counted_once_whatever_its_bad_cells(folder):
    csv = folder / "labels.csv"
    csv.write_text(csv.read_text().replace("a.png,1,0", "a.png,yes,maybe"))
    ds = FolderDataset(folder, split="all", skip_bad=True)
    assert len(ds) == 3 and len(ds.skipped) == 1 and "'cat' has value 'yes'" in ds.skipped[0][1]


def test_multi_valued_label_column_says_how_to_make_binary_columns(tmp_path):
    root = tmp_path / "digits"
    root.mkdir()
    rows = ["image,digit,odd"]
    for i in range(20):
        Image.fromarray(np.full((4, 4), i, np.uint8), mode="L").save(root / f"{i}.png")
        rows.append(f"{i}.png,{i % 10},{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    for skip_bad in (False, True):  # a whole column of classes is not a few bad rows
        with pytest.raises(DatasetError) as info:
            FolderDataset(root, split="all", skip_bad=skip_bad)
        message = str(info.value)
        assert "labels.csv: label column 'digit' has values 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in message
        assert "one 0/1 column per class (digit_0, digit_1, digit_2, ...)" in message and "\n" not in message
    yes_no = ["image,sick"] + [f"{i}.png,{('no', 'yes')[i % 2]}" for i in range(20)]
    (root / "labels.csv").write_text("\n".join(yes_no) + "\n")
    with pytest.raises(
        DatasetError, match="label column 'sick' has values no, yes; .*map its two values to 0"
    ):
        FolderDataset(root, split="all", skip_bad=True)


def test_csv_problems(folder, tmp_path):
    (folder / "other.csv").write_text("x\n")
    (folder / "labels.csv").rename(folder / "lab.csv")
    with pytest.raises(DatasetError, match="several CSV files"):
        FolderDataset(folder)
    assert len(FolderDataset(folder, labels_csv=folder / "lab.csv", split="all")) == 4
    (folder / "other.csv").unlink()
    (folder / "lab.csv").write_text("name_of_file,cat\na.png,1\n")
    with pytest.raises(DatasetError, match="missing image column"):
        FolderDataset(folder)
    (folder / "lab.csv").write_text("image,Patient ID\na.png,1\n")
    with pytest.raises(DatasetError, match="no label columns"):
        FolderDataset(folder)
    (folder / "lab.csv").unlink()
    with pytest.raises(DatasetError, match="no labels CSV"):
        FolderDataset(folder)


def test_duplicate_rows(folder):
    with open(folder / "labels.csv", "a") as fh:
        fh.write("a.png,0,0,p9\n")
    with pytest.raises(DatasetError, match="listed twice"):
        FolderDataset(folder, split="all")


def test_multi_frame_and_corrupt_images(tmp_path):
    frames = [Image.new("L", (8, 8), c) for c in (0, 255)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(DatasetError, match=r"anim\.png: multi-frame image \(2 frames\)"):
        read_image_file(tmp_path / "anim.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=r"bad\.png: unreadable or corrupt image"):
        read_image_file(tmp_path / "bad.png")


def test_open_dataset_folder(folder):
    ds = open_dataset("folder", data_root=folder, split="all", size=8)
    assert isinstance(ds, FolderDataset) and ds.describe()["source"] == "folder"
    with pytest.raises(DatasetError, match="needs a data root"):
        open_dataset("folder")
    with pytest.raises(DatasetError, match="data root not found"):
        open_dataset("folder", data_root=folder / "nope")
