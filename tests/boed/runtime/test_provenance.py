"""Provenance records: the same shape for every checkpoint, and the --resume data check."""

from boed.runtime.provenance import data_record, resume_data_mismatch, trained_on


class _DS:
    labels = ("a", "b")

    def __init__(self, fingerprint="1" * 64):
        self.fingerprint = fingerprint

    def describe(self):
        return {"source": "folder", "fingerprint": self.fingerprint, "split": "train", "split_seed": 3}

    def __len__(self):
        return 5


def test_trained_on_record():
    assert trained_on(_DS(), 64) == {
        "source": "folder",
        "fingerprint": "1" * 64,
        "split_seed": 3,
        "labels": ["a", "b"],
        "image_size": 64,
    }
    assert trained_on(_DS(), 32, labels=["b"])["labels"] == ["b"]
    assert trained_on(object(), 8) == {
        "source": None,
        "fingerprint": None,
        "split_seed": None,
        "labels": [],
        "image_size": 8,
    }


def test_data_record():
    assert data_record(_DS(), _DS("2" * 64)) == {"train": _DS().describe(), "val": _DS("2" * 64).describe()}


def test_resume_data_mismatch():
    saved = trained_on(_DS(), 64)
    assert resume_data_mismatch(saved, trained_on(_DS(), 64)) is None
    assert "differ" in resume_data_mismatch(saved, trained_on(_DS("2" * 64), 64))
    assert resume_data_mismatch(None, trained_on(_DS(), 64)) is None  # nothing recorded: no check
    assert resume_data_mismatch(saved, trained_on(object(), 64)) is None
