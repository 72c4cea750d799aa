"""Split hygiene (the split never depends on the run's seed) and checkpoint provenance checks."""

import shutil

import numpy as np
import pytest
from PIL import Image

from datasets import DEFAULT_SPLIT_SEED, open_dataset
from datasets.base import DESCRIBE_KEYS
from datasets.dicom import new_dicom
from datasets.provenance import source_mismatch, training_overlap

N_IMAGES = 40


def _folder(root):
    root.mkdir()
    rows = ["image,big,small"]
    for i in range(N_IMAGES):
        Image.fromarray(np.full((6, 6), i, np.uint8), mode="L").save(root / f"img{i:02d}.png")
        rows.append(f"img{i:02d}.png,{i % 2},{(i // 2) % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _dicom(root):
    root.mkdir()
    for i in range(N_IMAGES):
        new_dicom(np.full((6, 6), i, np.uint16)).save_as(root / f"x{i:02d}.dcm", enforce_file_format=True)
    return root


def _nih(root):
    root.mkdir()
    (root / "images").mkdir()
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    for i in range(N_IMAGES):
        name = f"{i + 1:08d}_000.png"
        Image.fromarray(np.full((6, 6), i, np.uint8), mode="L").save(root / "images" / name)
        rows.append(f"{name},No Finding,0,{i + 1},50,M,PA")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows) + "\n")
    return root


MAKERS = {"folder": _folder, "dicom": _dicom, "nih": _nih}


@pytest.fixture(params=sorted(MAKERS))
def source(request, tmp_path):
    return request.param, MAKERS[request.param](tmp_path / request.param)


def _ids(source, root, split, seed, **kw):
    return set(open_dataset(source, data_root=root, split=split, size=8, seed=seed, **kw).ids)


def test_splits_do_not_depend_on_the_run_seed(source):
    name, root = source
    train0, test1 = _ids(name, root, "train", 0), _ids(name, root, "test", 1)
    assert train0 and test1 and not train0 & test1  # the issue: seed 1's test held seed 0's training images
    for split in ("train", "val", "test"):
        assert _ids(name, root, split, 0) == _ids(name, root, split, 1) == _ids(name, root, split, 7)
    parts = [_ids(name, root, s, 3) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == N_IMAGES and not (
        parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]
    )
    # the run seed still picks the subset, always inside the split
    a, b = _ids(name, root, "train", 0, n=10), _ids(name, root, "train", 1, n=10)
    assert a != b and a <= train0 and b <= train0
    # another split seed is another partition
    assert _ids(name, root, "train", 0, split_seed=DEFAULT_SPLIT_SEED + 1) != train0


def test_describe_keys_and_fingerprint(source, tmp_path):
    name, root = source
    d = open_dataset(name, data_root=root, split="test", size=8).describe()
    assert set(DESCRIBE_KEYS) <= set(d)
    assert d["source"] == name and d["split"] == "test" and d["split_seed"] == DEFAULT_SPLIT_SEED
    assert len(d["fingerprint"]) == 64 and int(d["fingerprint"], 16) >= 0
    # independent of the split, the seed and where the folder lies; changes with the content
    assert (
        open_dataset(name, data_root=root, split="train", seed=5, size=16).describe()["fingerprint"]
        == d["fingerprint"]
    )
    moved = shutil.copytree(root, tmp_path / "moved")
    assert (
        open_dataset(name, data_root=moved, split="all", size=8).describe()["fingerprint"] == d["fingerprint"]
    )
    victim = sorted(p for p in moved.rglob("*") if p.suffix in (".png", ".dcm"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0\0")
    assert (
        open_dataset(name, data_root=moved, split="all", size=8).describe()["fingerprint"] != d["fingerprint"]
    )


def test_fingerprint_covers_the_labels_csv(tmp_path):
    root = _folder(tmp_path / "f")
    before = open_dataset("folder", data_root=root, split="all").describe()["fingerprint"]
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("img00.png,0,0", "img00.png,1,0"))
    assert open_dataset("folder", data_root=root, split="all").describe()["fingerprint"] != before


def test_phantom_description():
    d = open_dataset("phantoms", split="val", n=3, size=16, seed=4).describe()
    assert set(DESCRIBE_KEYS) <= set(d) and d["split_seed"] is None
    same = open_dataset("phantoms", split="train", n=7, size=32, seed=4).describe()
    other = open_dataset("phantoms", split="val", n=3, size=16, seed=5).describe()
    assert same["fingerprint"] == d["fingerprint"] != other["fingerprint"]


def _describe(source, split, fingerprint="f" * 64, split_seed=0, **extra):
    return {"source": source, "fingerprint": fingerprint, "split": split, "split_seed": split_seed} | extra


def test_training_overlap_detected():
    trained = {"train": _describe("folder", "train"), "val": _describe("folder", "val")}
    assert "checkpoint's train split" in training_overlap(trained, _describe("folder", "train"))
    assert "checkpoint's val split" in training_overlap(trained, _describe("folder", "val"))
    assert "all of it" in training_overlap(trained, _describe("folder", "all"))
    reason = training_overlap(trained, _describe("folder", "test", split_seed=1))
    assert "another split seed" in reason and "\n" not in reason
    phantoms = {"train": _describe("phantoms", "train", "a" * 64, None)}
    assert training_overlap(phantoms, _describe("phantoms", "train", "a" * 64, None))


def test_training_overlap_not_detected():
    trained = {"train": _describe("folder", "train"), "val": _describe("folder", "val")}
    assert training_overlap(trained, _describe("folder", "test")) is None
    assert training_overlap(trained, _describe("folder", "train", fingerprint="e" * 64)) is None
    phantoms = {
        "train": _describe("phantoms", "train", "a" * 64, None),
        "val": _describe("phantoms", "val", "a" * 64, None),
    }
    assert training_overlap(phantoms, _describe("phantoms", "test", "a" * 64, None)) is None
    assert training_overlap(phantoms, _describe("phantoms", "train", "b" * 64, None)) is None
    # NIH official lists: the test split does not depend on the split seed
    nih = {"train": _describe("nih", "train", split_lists=True)}
    assert training_overlap(nih, _describe("nih", "test", split_seed=3, split_lists=True)) is None
    assert training_overlap(nih, _describe("nih", "test", split_seed=3, split_lists=False))


def test_old_checkpoint_meta_gives_none():
    old = {"train": {"source": "phantoms", "split": "train", "n": 100}, "val": {"source": "phantoms"}}
    data = _describe("phantoms", "train", "a" * 64, None)
    for meta in (old, {}, None, {"train": "x"}):
        assert training_overlap(meta, data) is None and source_mismatch(meta, data) is None
    assert (
        training_overlap({"train": _describe("folder", "train")}, {"source": "folder", "split": "train"})
        is None
    )


def test_source_mismatch():
    phantoms = {"train": _describe("phantoms", "train", "a" * 64, None)}
    warning = source_mismatch(phantoms, _describe("dicom", "test"))
    assert "trained on phantoms" in warning and "dicom" in warning
    assert source_mismatch(phantoms, _describe("phantoms", "test", "b" * 64, None)) is None  # another seed
    folder = {"train": _describe("folder", "train")}
    assert source_mismatch(folder, _describe("folder", "test")) is None
    assert "another folder collection" in source_mismatch(folder, _describe("folder", "test", "e" * 64))


def test_real_datasets_through_provenance(tmp_path):
    root = _folder(tmp_path / "f")
    trained = {
        s: open_dataset("folder", data_root=root, split=s, seed=0).describe() for s in ("train", "val")
    }
    assert (
        training_overlap(trained, open_dataset("folder", data_root=root, split="test", seed=1).describe())
        is None
    )
    assert training_overlap(
        trained, open_dataset("folder", data_root=root, split="train", seed=1, n=5).describe()
    )


def test_check_training_data_refuses_overlap_and_returns_warnings():
    from datasets.errors import DatasetError
    from datasets.provenance import check_training_data

    trained = {"train": {"source": "folder", "fingerprint": "f" * 64, "split": "train", "split_seed": 0}}
    with pytest.raises(
        DatasetError, match="the checkpoint was trained on .*train split.*--allow-training-images"
    ):
        check_training_data(trained, dict(trained["train"]))
    allowed = check_training_data(trained, dict(trained["train"]), allow_overlap=True, what="the clf")
    assert len(allowed) == 1 and allowed[0].startswith("the clf was trained on these images")
    test = dict(trained["train"], split="test")
    assert check_training_data(trained, test) == []
    warnings = check_training_data(trained, dict(test, source="dicom"))
    assert len(warnings) == 1 and "trained on folder images" in warnings[0]
    # a record without a fingerprint (older checkpoints) still tells one source from another
    old = {"train": {"source": "phantoms", "split": "train"}}
    assert (
        check_training_data(old, dict(test, source="nih"))
        and check_training_data(old, {"source": "phantoms"}) == []
    )


def test_another_phantom_generator_version_is_another_distribution():
    from datasets import open_dataset

    v1 = open_dataset("phantoms-v1", split="train", size=16, n=2).describe()
    v2 = open_dataset("phantoms-v2", split="test", size=16, n=2).describe()
    meta = {"train": v1}
    warning = source_mismatch(meta, v2)
    assert "datasets.phantoms v1 phantoms" in warning and "datasets.phantoms v2" in warning
    assert source_mismatch(meta, open_dataset("phantoms-v1", split="test", size=16, n=2).describe()) is None
    # the default "phantoms" is v2 now: a v1-trained record warns on it too
    assert source_mismatch(meta, open_dataset("phantoms", split="test", size=16, n=2).describe())
    assert training_overlap(meta, v2) is None  # another version shares no image
