"""NIH ChestX-ray14 loader on small fake trees: both CSV variants, both folder layouts, splits, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import open_dataset
from datasets.errors import DatasetError
from datasets.labels import LABELS
from datasets.nih import NIHDataset

ROWS = [  # image, finding labels, patient
    ("00000001_000.png", "Cardiomegaly|Effusion", 1),
    ("00000001_001.png", "No Finding", 1),
    ("00000002_000.png", "Nodule", 2),
    ("00000003_000.png", "No Finding", 3),
    ("00000004_000.png", "Mass|Nodule|Pneumothorax", 4),
    ("00000005_000.png", "Infiltration", 5),
    ("00000006_000.png", "No Finding", 6),
    ("00000007_000.png", "Hernia", 7),
    ("00000008_000.png", "Pleural_Thickening", 8),
    ("00000009_000.png", "No Finding", 9),
]


def make_tree(
    root,
    *,
    sex_column="Patient Gender",
    layout="nested",
    csv_name="Data_Entry_2017_v2020.csv",
    rows=ROWS,
    extra_images=(),
    lists=False,
):
    root.mkdir(parents=True, exist_ok=True)
    header = (
        f"Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,{sex_column},View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    lines = [header] + [f"{name},{labels},0,{pid},50,M,PA,20,20,0.143,0.143" for name, labels, pid in rows]
    (root / csv_name).write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    for k, name in enumerate([r[0] for r in rows] + list(extra_images)):
        if layout == "nested":
            folder = root / f"images_{k // 4 + 1:03d}" / "images"
        elif layout == "flat":
            folder = root / "images"
        else:
            folder = root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L").save(folder / name)
    if lists:
        names = [r[0] for r in rows]
        (root / "test_list.txt").write_text("\n".join(names[7:]) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(names[:7]) + "\n")
    return root


@pytest.mark.parametrize("sex_column", ["Patient Gender", "Patient Sex"])
@pytest.mark.parametrize("layout", ["nested", "flat", "root"])
@pytest.mark.parametrize("csv_name", ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"])
def test_layouts_and_csv_variants(tmp_path, sex_column, layout, csv_name):
    root = make_tree(tmp_path / "nih", sex_column=sex_column, layout=layout, csv_name=csv_name)
    ds = NIHDataset(root, split="all", size=16)
    assert len(ds) == 10 and ds.labels == LABELS
    item = ds[0]
    assert item["idx"] == "00000001_000.png" and item["img"].shape == (1, 16, 16)
    lab = dict(zip(LABELS, item["lab"].tolist(), strict=True))
    assert lab["Cardiomegaly"] == 1 and lab["Effusion"] == 1 and lab["Mass"] == 0 and lab["Any"] == 1
    assert ds[1]["lab"].sum() == 0  # No Finding: every label known absent


def test_pixels_are_grey_levels_over_255(tmp_path):
    root = make_tree(tmp_path / "nih")
    ds = NIHDataset(root, split="all", size=20)
    path = ds.paths[3]
    expected = np.asarray(Image.open(path), dtype=np.float32) / 255
    assert torch.equal(ds[3]["img"][0], torch.from_numpy(expected))


def test_rgba_images_are_read_as_grey(tmp_path):
    root = make_tree(tmp_path / "nih", layout="flat")
    Image.new("RGBA", (20, 20), (255, 255, 255, 255)).save(root / "images" / "00000002_000.png")
    assert torch.allclose(NIHDataset(root, split="all", size=8)[2]["img"], torch.ones(1, 8, 8))


def test_official_split_lists(tmp_path):
    root = make_tree(tmp_path / "nih", lists=True)
    test = NIHDataset(root, split="test", size=8)
    assert test.ids == [r[0] for r in ROWS[7:]]
    train, val = NIHDataset(root, split="train", size=8), NIHDataset(root, split="val", size=8, seed=0)
    assert sorted(train.ids + val.ids) == sorted(r[0] for r in ROWS[:7])
    pid = {r[0]: r[2] for r in ROWS}
    assert not {pid[i] for i in train.ids} & {pid[i] for i in val.ids}


def test_seeded_patient_split_without_lists(tmp_path):
    rows = [(f"{p:08d}_{f:03d}.png", "No Finding", p) for p in range(1, 31) for f in range(2)]
    root = make_tree(tmp_path / "nih", rows=rows)
    splits = {s: NIHDataset(root, split=s, size=8, seed=3) for s in ("train", "val", "test")}
    ids = [set(d.ids) for d in splits.values()]
    assert sum(map(len, ids)) == 60 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    patients = [{i[:8] for i in s} for s in ids]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert len(ids[0]) > len(ids[2]) > len(ids[1]) > 0
    again = NIHDataset(root, split="train", size=8, seed=3)
    assert again.ids == splits["train"].ids
    sub = NIHDataset(root, split="train", size=8, seed=3, n=5)
    assert len(sub) == 5 and set(sub.ids) <= ids[0]


def test_missing_columns(tmp_path):
    root = make_tree(tmp_path / "nih")
    csv = root / "Data_Entry_2017_v2020.csv"
    csv.write_text(csv.read_text().replace("Finding Labels", "Findings"))
    with pytest.raises(DatasetError, match=r"Data_Entry_2017_v2020\.csv: missing column\(s\) Finding Labels"):
        NIHDataset(root, split="all")


def test_no_csv(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv"):
        NIHDataset(tmp_path / "empty")


def test_label_rows_without_images_and_images_without_labels(tmp_path):
    root = make_tree(tmp_path / "nih", layout="flat", extra_images=["00000099_000.png"])
    (root / "images" / "00000003_000.png").unlink()
    with pytest.raises(DatasetError, match=r"label row for '00000003_000.png' has no image"):
        NIHDataset(root, split="all")
    ds = NIHDataset(root, split="all", skip_bad=True)
    assert len(ds) == 9 and len(ds.skipped) == 2
    reasons = " ".join(r for _, r in ds.skipped)
    assert "has no image" in reasons and "no row in the labels CSV" in reasons
    assert any(p.endswith("00000099_000.png") for p, _ in ds.skipped)
    assert ds.describe()["skipped"] == 2


def test_unknown_finding_name(tmp_path):
    root = make_tree(tmp_path / "nih", rows=[*ROWS[:3], ("00000010_000.png", "Broken Leg", 10)])
    with pytest.raises(DatasetError, match=r"row 5 \(00000010_000.png\): unknown finding 'Broken Leg'"):
        NIHDataset(root, split="all")
    assert len(NIHDataset(root, split="all", skip_bad=True, validate=False)) == 3


def test_corrupt_image(tmp_path):
    root = make_tree(tmp_path / "nih", layout="flat")
    bad = root / "images" / "00000005_000.png"
    bad.write_bytes(bad.read_bytes()[:40])
    ds = NIHDataset(root, split="all", size=8)
    with pytest.raises(DatasetError, match=r"00000005_000\.png: unreadable or corrupt image"):
        ds.tensors()
    ds = NIHDataset(root, split="all", size=8, skip_bad=True)
    assert len(ds) == 9 and "00000005_000.png" not in ds.ids and ds.tensors()[0].shape == (9, 1, 8, 8)


def test_data_root_from_environment(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "nih")
    monkeypatch.setenv("BOED_DATA_ROOT", str(root))
    ds = open_dataset("chestxray", split="all", size=8)
    assert isinstance(ds, NIHDataset) and len(ds) == 10
    monkeypatch.delenv("BOED_DATA_ROOT")
    assert open_dataset("chestxray", split="test", n=3).describe()["source"] == "phantoms"


def test_bbox_list(tmp_path):
    root = make_tree(tmp_path / "nih", layout="flat")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000002_000.png,Nodule,4,2,6,8,,,\n"
        "00000005_000.png,Infiltrate,0,0,20,10,,,\n"
    )
    ds = NIHDataset(root, split="all", size=10)  # images are 20 x 20: boxes scale by 1/2
    assert ds.findings(0) == []
    (f,) = ds.findings(2)
    assert f.name == "Nodule" and f.bbox == (1, 2, 5, 5)
    assert ds.findings(5)[0].name == "Infiltration" and ds.findings(5)[0].bbox == (0, 0, 5, 10)


def test_bbox_images_are_the_located_ones_and_reach_the_simulation(tmp_path):
    """Only images of BBox_List_2017.csv have known locations: an empty list elsewhere means "no
    boxes given", which the simulation stores as null (left out of the hit rate), not "healthy"."""
    from boed.simulate import image_findings

    root = make_tree(tmp_path / "nih", layout="flat")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000002_000.png,Nodule,4,2,6,8,,,\n"
    )
    ds = NIHDataset(root, split="all", size=10)
    assert [ds.findings_known(i) for i in range(len(ds))] == [i == 2 for i in range(len(ds))]
    assert image_findings(ds, 2) == [("Nodule", (1, 2, 5, 5))]
    assert image_findings(ds, 0) is None
    (root / "BBox_List_2017.csv").unlink()
    assert not NIHDataset(root, split="all", size=10).findings_known(2)
