"""Evaluation table: conditions, per-label metrics, shared labels, a known-answer oracle classifier."""

import pytest
import torch
from fakes import FakeDataset

from classifiers.errors import ClassifierError
from classifiers.evaluate import SQUARES, evaluate_classifier, evaluate_dataset, shared_labels
from datasets.labels import LABELS


class CellOracle:
    """Knows where FakeDataset draws finding j (cell j of a 4x4 grid) and reads it from the observation.

    ``labels`` may be renamed or reordered (the output for a name follows the name).
    """

    image_size = 32
    temperature = 1.0
    name = "oracle"

    def __init__(self, labels=LABELS):
        self.labels = tuple(labels)

    def check_inputs(self, observed, mask):
        if observed.shape[-1] != 32:
            raise ClassifierError("trained on 32x32")

    def logits(self, observed, mask):
        seen = observed * mask
        cell = 8
        by_name = {name: torch.full((observed.shape[0],), -5.0) for name in LABELS}
        for j in range(2):
            patch = seen[:, 0, :cell, j * cell : (j + 1) * cell]
            by_name[LABELS[j]] = torch.where(patch.amax(dim=(1, 2)) > 0.6, 5.0, -5.0)
        by_name["Any"] = torch.maximum(by_name[LABELS[0]], by_name[LABELS[1]])
        return torch.stack(
            [by_name.get(name, torch.full_like(by_name["Any"], -5.0)) for name in self.labels], 1
        )


def test_oracle_is_perfect_on_full_images_and_undefined_labels_are_none():
    ds = FakeDataset(n=64, size=32, seed=3, n_findings=2)
    result = evaluate_dataset(CellOracle(), ds)
    names = [c["name"] for c in result["conditions"]]
    assert names == [f"{k} squares" for k in SQUARES] + ["full"]
    full = result["conditions"][-1]
    assert full["auroc"]["Atelectasis"] == pytest.approx(1.0) and full["accuracy"]["Any"] == pytest.approx(
        1.0
    )
    assert full["ece"]["Atelectasis"] < 0.01  # sigmoid(+-5): 0.0067 from certainty
    assert full["auroc"]["Hernia"] is None and "Hernia" in result["undefined"]
    assert full["accuracy"]["Hernia"] == pytest.approx(1.0)  # always absent, always predicted absent
    assert result["conditions"][0]["auroc"]["Atelectasis"] == pytest.approx(0.5)  # nothing observed
    assert result["conditions"][0]["observed_fraction"] == 0.0
    assert result["left_out"] == {"data_only": [], "classifier_only": []}
    assert result["dataset"]["source"] == "fake"


def test_metrics_are_reported_under_each_label_s_own_name():
    # the classifier's outputs in another order: every metric must follow the name, not the column
    ds = FakeDataset(n=64, size=32, seed=5, n_findings=2)
    reordered = CellOracle(labels=("Any", "Cardiomegaly", "Atelectasis", "Hernia"))
    result = evaluate_dataset(reordered, ds)
    assert result["labels"] == ["Any", "Cardiomegaly", "Atelectasis", "Hernia"]
    full = result["conditions"][-1]
    images, labels = ds.tensors()
    present = labels[:, LABELS.index("Cardiomegaly")]
    assert result["positives"]["Cardiomegaly"] == int(present.sum())
    assert result["positives"]["Any"] == int(labels[:, -1].sum())
    for name in ("Any", "Cardiomegaly", "Atelectasis"):
        assert full["auroc"][name] == pytest.approx(1.0) and full["accuracy"][name] == pytest.approx(1.0)
    assert sorted(result["left_out"]["data_only"]) == sorted(set(LABELS) - set(result["labels"]))


def test_accuracy_of_a_label_is_not_any_s():
    # a classifier that gets Any right and always says "absent" for Atelectasis
    class HalfWrong(CellOracle):
        def logits(self, observed, mask):
            out = super().logits(observed, mask)
            out[:, self.labels.index("Atelectasis")] = -5.0
            return out

    ds = FakeDataset(n=64, size=32, seed=6, n_findings=2)
    full = evaluate_dataset(HalfWrong(), ds)["conditions"][-1]
    prevalence = float(ds.tensors()[1][:, 0].mean())
    assert full["accuracy"]["Any"] == pytest.approx(1.0)
    assert full["accuracy"]["Atelectasis"] == pytest.approx(1 - prevalence)
    assert full["auroc"]["Atelectasis"] == pytest.approx(0.5)


def test_only_the_shared_labels_are_evaluated_and_the_rest_named():
    images, labels = FakeDataset(n=32, size=32, seed=4).tensors()
    clf = CellOracle(labels=("Atelectasis", "Any", "Cancer"))
    data_names = ("Any", "Atelectasis", "Mass")
    data = labels[:, [LABELS.index(x) for x in data_names]]
    result = evaluate_classifier(clf, images, data, label_names=data_names, squares=(1,))
    assert result["labels"] == ["Atelectasis", "Any"]
    assert result["left_out"] == {"data_only": ["Mass"], "classifier_only": ["Cancer"]}
    assert result["positives"]["Any"] == int(labels[:, -1].sum())
    only = evaluate_classifier(clf, images, data, label_names=data_names, only=["Any"], full=False)
    assert only["labels"] == ["Any"] and set(only["conditions"][0]["auroc"]) == {"Any"}


def test_shared_labels_errors():
    with pytest.raises(ClassifierError, match="no label in common.*classifier: big, small; data: Any"):
        shared_labels(("big", "small"), ("Any",))
    with pytest.raises(ClassifierError, match="--label Mass: not a label of both.*choose from Any"):
        shared_labels(("Any", "Mass"), ("Any",), only=["Mass"])


def test_all_nan_label_column_is_reported_not_a_crash():
    ds = FakeDataset(n=32, size=32, seed=4)
    images, labels = ds.tensors()
    labels = labels.clone()
    labels[:, 0] = float("nan")
    result = evaluate_classifier(CellOracle(), images, labels, squares=(1,))
    assert result["positives"]["Atelectasis"] == 0 and result["negatives"]["Atelectasis"] == 0
    full = result["conditions"][-1]
    assert full["auroc"]["Atelectasis"] is None and full["accuracy"]["Atelectasis"] is None
    assert full["ece"]["Atelectasis"] is None


def test_non_finite_outputs_are_a_clear_error():
    class Broken(CellOracle):
        def logits(self, observed, mask):
            out = super().logits(observed, mask)
            out[0, 0] = float("nan")
            return out

    images, labels = FakeDataset(n=8, size=32).tensors()
    with pytest.raises(ClassifierError, match="non-finite probabilities at 0 squares"):
        evaluate_classifier(Broken(), images, labels)


def test_mismatched_inputs():
    images, labels = FakeDataset(n=8, size=32).tensors()
    with pytest.raises(ClassifierError, match="labels must be"):
        evaluate_classifier(CellOracle(), images, labels[:, :3], label_names=LABELS)
    small, _ = FakeDataset(n=8, size=16).tensors()
    with pytest.raises(ClassifierError, match="32x32"):
        evaluate_classifier(CellOracle(), small, labels)


def test_training_images_are_refused_unless_allowed():
    pytest.importorskip("datasets.provenance")

    class Described(FakeDataset):
        def describe(self):
            return {"source": "folder", "fingerprint": "abc123", "split": "train", "split_seed": 0}

    clf = CellOracle()
    clf.meta = {"data": {"train": Described().describe(), "val": {**Described().describe(), "split": "val"}}}
    ds = Described(n=16, size=32)
    with pytest.raises(ClassifierError, match="trained on images of this dataset.*--allow-training-images"):
        evaluate_dataset(clf, ds)
    result = evaluate_dataset(clf, ds, allow_training_images=True, squares=(), full=True)
    assert "checkpoint's train split" in result["training_overlap"]
    other = Described(n=16, size=32)
    other.describe = lambda: {"source": "folder", "fingerprint": "abc123", "split": "test", "split_seed": 0}
    assert evaluate_dataset(clf, other, squares=())["training_overlap"] is None
