"""Exported phantoms read back identically (up to file quantisation) through every loader."""

import re

import pandas as pd
import pytest
import torch

from datasets import open_dataset
from datasets.errors import DatasetError
from datasets.export import export_phantoms, quantise


@pytest.mark.parametrize(("fmt", "readers"), [("png", ("nih", "folder")), ("dicom", ("dicom",))])
def test_round_trip(tmp_path, fmt, readers):
    paths = export_phantoms(tmp_path, n=10, size=32, fmt=fmt, seed=5, split="val")
    assert all(re.fullmatch(r"\d{8}_\d{3}\.(png|dcm)", p.name) for p in paths)
    images, labels = open_dataset("phantoms", split="val", n=10, size=32, seed=5).tensors()
    for reader in readers:
        ds = open_dataset(reader, data_root=tmp_path, split="all", size=32)
        back, back_labels = ds.tensors()
        assert ds.ids == [p.name for p in paths]
        assert torch.equal(back, quantise(images, fmt)), reader
        assert torch.equal(back_labels, labels), reader
    if fmt == "dicom":
        assert ds.spacing(0) == pytest.approx((350 / 32, 350 / 32), abs=1e-4)
    assert (quantise(images, fmt) - images).abs().max() <= (0.5 / 255 if fmt == "png" else 0.5 / 4095) + 1e-7


def test_csv_files(tmp_path):
    export_phantoms(tmp_path, n=12, size=32, seed=1, prevalence=1.0)
    entries = pd.read_csv(tmp_path / "Data_Entry_2017_v2020.csv")
    assert list(entries.columns[:7]) == [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
    ]
    assert (entries["Finding Labels"] != "No Finding").all()
    boxes = pd.read_csv(tmp_path / "BBox_List_2017.csv")
    assert list(boxes.columns) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    n_findings = sum(len(s.split("|")) for s in entries["Finding Labels"])
    assert len(boxes) == n_findings and (boxes["w"] > 0).all() and (boxes["h]"] > 0).all()


def test_refuses_to_overwrite(tmp_path):
    export_phantoms(tmp_path, n=2, size=16)
    with pytest.raises(DatasetError, match="an export already exists"):
        export_phantoms(tmp_path, n=2, size=16)
    export_phantoms(tmp_path, n=3, size=16, overwrite=True)
    with pytest.raises(DatasetError, match="unknown format"):
        export_phantoms(tmp_path / "x", n=1, fmt="jpeg")


def test_boxes_round_trip(tmp_path):
    export_phantoms(tmp_path, n=8, size=32, seed=2, prevalence=1.0)
    phantoms = open_dataset("phantoms", n=8, size=32, seed=2, prevalence=1.0)
    nih = open_dataset("nih", data_root=tmp_path, split="all", size=32)
    assert all(phantoms.findings(i) == nih.findings(i) for i in range(8))
    assert all(len(nih.findings(i)) >= 1 for i in range(8))
