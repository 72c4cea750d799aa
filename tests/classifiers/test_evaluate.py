"""Evaluation table: conditions, undefined labels, a known-answer oracle classifier."""

import pytest
import torch
from fakes import FakeDataset

from classifiers.errors import ClassifierError
from classifiers.evaluate import SQUARES, evaluate_classifier, evaluate_dataset
from datasets.labels import LABELS


class CellOracle:
    """Knows where FakeDataset draws finding j (cell j of a 4x4 grid) and reads it from the observation."""

    labels = LABELS
    image_size = 32
    temperature = 1.0

    def check_labels(self, labels):
        if tuple(labels) != LABELS:
            raise ClassifierError("label set does not match")

    def check_inputs(self, observed, mask):
        if observed.shape[-1] != 32:
            raise ClassifierError("trained on 32x32")

    def logits(self, observed, mask):
        seen = observed * mask
        cell = 8
        out = torch.full((observed.shape[0], len(LABELS)), -5.0)
        for j in range(2):
            patch = seen[:, 0, :cell, j * cell : (j + 1) * cell]
            out[:, j] = torch.where(patch.amax(dim=(1, 2)) > 0.6, 5.0, -5.0)
        out[:, -1] = out[:, :2].max(dim=1).values
        return out


def test_oracle_is_perfect_on_full_images_and_undefined_labels_are_none():
    ds = FakeDataset(n=64, size=32, seed=3, n_findings=2)
    result = evaluate_dataset(CellOracle(), ds)
    names = [c["name"] for c in result["conditions"]]
    assert names == [f"{k} squares" for k in SQUARES] + ["full"]
    full = result["conditions"][-1]
    assert full["auroc"]["Atelectasis"] == pytest.approx(1.0) and full["accuracy_any"] == pytest.approx(1.0)
    assert full["auroc"]["Hernia"] is None and "Hernia" in result["undefined"]
    assert result["conditions"][0]["auroc"]["Atelectasis"] == pytest.approx(0.5)  # nothing observed
    assert result["conditions"][0]["observed_fraction"] == 0.0
    assert result["dataset"]["source"] == "fake"


def test_all_nan_label_column_is_reported_not_a_crash():
    ds = FakeDataset(n=32, size=32, seed=4)
    images, labels = ds.tensors()
    labels = labels.clone()
    labels[:, 0] = float("nan")
    result = evaluate_classifier(CellOracle(), images, labels, squares=(1,))
    assert result["positives"]["Atelectasis"] == 0 and result["negatives"]["Atelectasis"] == 0
    assert result["conditions"][-1]["auroc"]["Atelectasis"] is None


def test_mismatched_inputs():
    images, labels = FakeDataset(n=8, size=32).tensors()
    with pytest.raises(ClassifierError, match="labels must be"):
        evaluate_classifier(CellOracle(), images, labels[:, :3], label_names=LABELS)
    with pytest.raises(ClassifierError, match="label set"):
        evaluate_classifier(CellOracle(), images, labels[:, :3], label_names=LABELS[:3])
    small, _ = FakeDataset(n=8, size=16).tensors()
    with pytest.raises(ClassifierError, match="32x32"):
        evaluate_classifier(CellOracle(), small, labels)
