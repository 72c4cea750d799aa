"""open_dataset and the ImageDataset contract on phantoms."""

import json

import pytest
import torch

from datasets import IMAGE_SOURCES, LABELS, open_dataset
from datasets.base import ImageDataset
from datasets.errors import DatasetError
from datasets.phantoms import PhantomDataset


def test_phantom_dataset_contract():
    ds = open_dataset("phantoms", split="val", size=32, n=70)
    assert isinstance(ds, ImageDataset) and isinstance(ds, torch.utils.data.Dataset)
    assert len(ds) == 70 and ds.labels == LABELS and len(ds.ids) == 70
    item = ds[65]
    assert set(item) == {"idx", "img", "lab"} and item["idx"] == ds.ids[65]
    assert item["img"].shape == (1, 32, 32) and item["img"].dtype == torch.float32
    assert item["lab"].shape == (15,) and item["lab"].dtype == torch.float32
    images, labels = ds.tensors()
    assert torch.equal(images[65], item["img"]) and torch.equal(labels[65], item["lab"])
    assert torch.equal(ds[-1]["img"], images[-1])
    with pytest.raises(IndexError):
        ds[70]
    description = ds.describe()
    assert json.loads(json.dumps(description)) == description
    assert description["source"] == "phantoms" and description["split"] == "val"


def test_splits_are_disjoint_and_defaults():
    splits = {s: open_dataset("phantoms", split=s, size=16, n=64) for s in ("train", "val", "test")}
    flat = {s: d.tensors()[0].flatten(1) for s, d in splits.items()}
    for a in flat:
        for b in flat:
            if a < b:
                assert torch.cdist(flat[a], flat[b]).min() > 0.1
    assert [len(open_dataset("phantoms", split=s)) for s in ("train", "val", "test")] == [2000, 500, 500]
    assert not torch.equal(
        open_dataset("phantoms", n=4, seed=1, size=16).tensors()[0], splits["train"].tensors()[0][:4]
    )


def test_dataloader_batches():
    ds = open_dataset("phantoms", n=10, size=16)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["img"].shape == (4, 1, 16, 16) and batch["lab"].shape == (4, 15) and len(batch["idx"]) == 4


def test_findings_and_prevalence():
    ds = PhantomDataset("test", size=16, n=128, prevalence=1.0)
    assert ds.tensors()[1][:, -1].all()
    assert len(ds.findings(3)) >= 1


def test_bad_arguments(monkeypatch):
    monkeypatch.delenv("BOED_DATA_ROOT", raising=False)
    with pytest.raises(DatasetError, match="unknown image source 'mnist'"):
        open_dataset("mnist")
    with pytest.raises(DatasetError, match="unknown split"):
        open_dataset("phantoms", split="dev")
    for source in ("nih", "dicom", "folder"):
        with pytest.raises(DatasetError, match="needs a data root"):
            open_dataset(source)
    with pytest.raises(DatasetError, match="prevalence"):
        open_dataset("phantoms", prevalence=2)
    assert set(IMAGE_SOURCES) == {"chestxray", "phantoms", "nih", "dicom", "folder"}


def test_random_access_generates_once():
    ds = PhantomDataset("train", size=16, n=300)
    first = [ds[i]["img"] for i in (0, 1, 70)]  # sequential blocks: generated block by block
    assert getattr(ds, "_all", None) is None
    shuffled = [ds[i]["img"] for i in (250, 10, 130)]  # jumps around: everything generated once
    assert ds._all is not None
    images = ds.tensors()[0]
    assert all(
        torch.equal(a, images[i]) for a, i in zip(first + shuffled, (0, 1, 70, 250, 10, 130), strict=True)
    )
