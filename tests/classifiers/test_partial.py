"""PartialClassifier: the Classifier protocol, batching, temperature, bad input, checkpoints."""

import json

import pytest
import torch

from boed.protocols import Classifier
from classifiers import ClassifierError, load_classifier
from classifiers.avp_cnn import AVPCNN
from classifiers.config import classifier_preset
from classifiers.partial import PartialClassifier, save_classifier, shipped_checkpoint
from datasets.labels import LABELS


@pytest.fixture(scope="module")
def clf() -> PartialClassifier:
    torch.manual_seed(0)
    return PartialClassifier(AVPCNN(classifier_preset("tiny")), temperature=2.0, chunk_size=5)


def _inputs(b, size=32, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, channels, size, size, generator=g)
    return x, (torch.rand(b, channels, size, size, generator=g) > 0.5).float()


def test_implements_the_classifier_protocol(clf):
    assert isinstance(clf, Classifier)
    assert tuple(clf.labels) == LABELS and clf.image_size == 32


@pytest.mark.parametrize("batch", [0, 1, 4, 5, 13])
def test_predict_any_batch_matches_unchunked_forward(clf, batch):
    x, m = _inputs(batch)
    probs = clf.predict(x, m)
    assert probs.shape == (batch, 15) and probs.dtype == torch.float32
    if batch:
        assert probs.min() >= 0 and probs.max() <= 1
        with torch.no_grad():
            reference = torch.sigmoid(clf.model(x, m) / 2.0)  # temperature 2 applied
        assert torch.allclose(probs, reference, atol=1e-5)
        assert not probs.requires_grad
    assert clf.features(x, m).shape == (batch, clf.model.num_features)


BAD_INPUTS = [
    # observed shape, mask shape, message
    ((2, 1, 16, 16), (2, 1, 16, 16), "trained on 32x32"),
    ((2, 3, 32, 32), (2, 3, 32, 32), "3 channels"),
    ((1, 32, 32), (1, 32, 32), r"\(B, 1, H, W\)"),
    ((2, 1, 32, 32), (3, 1, 32, 32), "differ in shape"),
]


@pytest.mark.parametrize("xs,ms,message", BAD_INPUTS)
def test_bad_inputs_raise_before_any_work(clf, xs, ms, message):
    with pytest.raises(ClassifierError, match=message):
        clf.predict(torch.rand(xs), torch.ones(ms))
    with pytest.raises(ClassifierError, match=message):
        clf.features(torch.rand(xs), torch.ones(ms))


def test_label_set_mismatch(clf):
    clf.check_labels(LABELS)
    with pytest.raises(ClassifierError, match="missing"):
        clf.check_labels(LABELS[:-1])
    with pytest.raises(ClassifierError, match="different order"):
        clf.check_labels(tuple(reversed(LABELS)))


def test_save_load_roundtrip(tmp_path, clf):
    path = save_classifier(tmp_path / "c", clf.model, temperature=2.0, metrics={"x": 1})
    loaded = load_classifier(tmp_path / "c")
    x, m = _inputs(6)
    assert torch.allclose(loaded.predict(x, m), clf.predict(x, m), atol=1e-6)
    assert loaded.sha256 == json.loads((tmp_path / "c.json").read_text())["sha256"]
    assert loaded.meta["labels"] == list(LABELS) and loaded.meta["image_size"] == 32
    assert loaded.meta["preprocessing"]["input"].startswith("cat(")
    assert loaded.temperature == 2.0 and loaded.name == "c"
    assert load_classifier(path).sha256 == loaded.sha256  # by the weights file name too
    with pytest.raises(ClassifierError, match="missing"):
        load_classifier(tmp_path / "c", labels=LABELS[:3])


def test_tampered_truncated_missing_and_wrong_kind(tmp_path, clf):
    save_classifier(tmp_path / "c", clf.model)
    weights = tmp_path / "c.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ClassifierError, match="sha256 mismatch"):
        load_classifier(tmp_path / "c")
    weights.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(ClassifierError, match="sha256 mismatch"):
        load_classifier(tmp_path / "c")
    with pytest.raises(ClassifierError, match="not found"):
        load_classifier(tmp_path / "nothing")
    meta = json.loads((tmp_path / "c.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps(meta | {"kind": "sampler"}))
    with pytest.raises(ClassifierError, match="expected 'classifier'"):
        load_classifier(tmp_path / "c")


def test_weights_that_do_not_fit_the_config(tmp_path, clf):
    save_classifier(tmp_path / "c", clf.model)
    meta = json.loads((tmp_path / "c.json").read_text())
    meta["config"]["growth_rate"] = 6
    (tmp_path / "c.json").write_text(json.dumps(meta))
    with pytest.raises(ClassifierError, match="do not fit"):
        load_classifier(tmp_path / "c")


def test_no_shipped_checkpoint_for_a_preset():
    with pytest.raises(ClassifierError, match="no shipped classifier checkpoint for preset 'tiny'"):
        load_classifier(preset="tiny")


@pytest.mark.skipif(
    not shipped_checkpoint("cpu").with_suffix(".json").exists(), reason="no shipped checkpoint yet"
)
def test_shipped_cpu_checkpoint_loads_and_predicts():
    clf = load_classifier()
    assert clf.image_size == 64 and tuple(clf.labels) == LABELS
    assert clf.meta["metrics"]["ece_after"] is not None
    size = shipped_checkpoint("cpu").with_suffix(".safetensors").stat().st_size
    assert size < 5e6
    x, m = _inputs(3, size=64)
    assert clf.predict(x, m).shape == (3, 15)
