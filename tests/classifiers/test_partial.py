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


def _edit_config(tmp_path, clf, **changes):
    """Save ``clf`` as ``c``, then change its JSON config (the sha256 covers the weights only)."""
    save_classifier(tmp_path / "c", clf.model)
    meta = json.loads((tmp_path / "c.json").read_text())
    meta["config"].update(changes)
    (tmp_path / "c.json").write_text(json.dumps(meta))


def _one_line_error(path) -> str:
    with pytest.raises(ClassifierError) as info:
        load_classifier(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_weights_that_do_not_fit_the_config_name_the_first_tensor(tmp_path, clf):
    _edit_config(tmp_path, clf, init_features=16)
    expected = AVPCNN(classifier_preset("tiny")).state_dict()["net.features.conv0.weight"].shape
    wider = (16, *expected[1:])
    message = _one_line_error(tmp_path / "c")
    assert message.startswith(f"{tmp_path / 'c.safetensors'}: weights do not fit the config: ")
    assert f"first net.features.conv0.weight: file {tuple(expected)}, config {wider}" in message
    n_differ = int(message.split("config: ")[1].split(" tensor")[0])
    assert n_differ > 10  # every layer after the first convolution changes width


def test_missing_and_extra_tensors_are_counted(tmp_path, clf):
    _edit_config(tmp_path, clf, block_config=[1, 2, 1])  # a third dense block the file lacks
    assert "missing from the file" in _one_line_error(tmp_path / "c")
    _edit_config(tmp_path, clf, block_config=[1])  # the second block's tensors are left over
    message = _one_line_error(tmp_path / "c")
    assert "tensors differ, first net.features.norm5.weight: file (14,), config (12,)" in message


def test_weights_mismatch_counts_every_kind():
    from classifiers.partial import weights_mismatch

    z = torch.zeros
    assert weights_mismatch({"a": z(2), "b": z(1)}, {"a": z(2), "b": z(1)}) is None
    assert weights_mismatch({"a": z(2)}, {"a": z(2), "x": z(1)}) == (
        "1 tensor differs, first x: in the file, not in the configured network"
    )
    assert weights_mismatch({"a": z(2), "b": z(1)}, {"b": z(3)}) == (
        "2 tensors differ, first a: missing from the file"
    )


def test_more_labels_than_the_weights_have(tmp_path, clf):
    labels = [*LABELS, "Extra"]
    save_classifier(tmp_path / "c", clf.model)
    meta = json.loads((tmp_path / "c.json").read_text())
    meta["config"]["labels"] = meta["labels"] = labels
    (tmp_path / "c.json").write_text(json.dumps(meta))
    message = _one_line_error(tmp_path / "c")
    assert "net.class_layers.out.weight: file (15," in message and "config (16," in message


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"growth_rate": "twelve"}, "config field growth_rate: expected int, got 'twelve'"),
        ({"dropout": "none"}, "config field dropout: expected float, got 'none'"),
        ({"block_config": [1, "two"]}, "config field block_config: expected a list of int"),
        ({"labels": "Any"}, "config field labels: expected a list of str, got 'Any'"),
        ({"growth_rate": 0}, "config field growth_rate: must be at least 1, got 0"),
        ({"dropout": 1.5}, r"config field dropout: must be in \[0, 1\)"),
        ({"depth": 3}, "unknown key"),
    ],
)
def test_bad_config_values_are_one_line_naming_the_json_file(tmp_path, clf, changes, message):
    _edit_config(tmp_path, clf, **changes)
    text = _one_line_error(tmp_path / "c")
    assert text.startswith(f"{tmp_path / 'c.json'}: ")
    assert __import__("re").search(message, text), text


def test_no_config_and_bad_temperature(tmp_path, clf):
    save_classifier(tmp_path / "c", clf.model)
    meta = json.loads((tmp_path / "c.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "config"}))
    assert "expected a JSON object, got None" in _one_line_error(tmp_path / "c")
    for bad in ("hot", 0, -1.0, None):
        (tmp_path / "c.json").write_text(json.dumps(meta | {"temperature": bad}))
        assert "temperature must be a positive number" in _one_line_error(tmp_path / "c")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, clf, bad):
    from boed.runtime.checkpoints import save_checkpoint

    save_classifier(tmp_path / "c", clf.model)
    meta = json.loads((tmp_path / "c.json").read_text())
    tensors = {k: v.clone() for k, v in clf.model.state_dict().items()}
    name = "net.features.denseblock1.denselayer1.layers.conv1.weight"
    assert name in tensors
    tensors[name].view(-1)[3] = bad
    save_checkpoint(tmp_path / "c", tensors, {k: v for k, v in meta.items() if k != "sha256"})  # new sha256
    message = _one_line_error(tmp_path / "c")
    assert message.startswith(f"{tmp_path / 'c.safetensors'}: tensor {name} holds 1 non-finite value")


def test_a_dataset_s_own_labels_are_stored_and_exposed(tmp_path):
    from classifiers.config import ClassifierConfig

    config = ClassifierConfig(
        image_size=32, init_features=8, growth_rate=4, block_config=(1,), labels=("big", "small")
    )
    save_classifier(tmp_path / "own", AVPCNN(config))
    meta = json.loads((tmp_path / "own.json").read_text())
    assert meta["labels"] == ["big", "small"] and meta["config"]["labels"] == ["big", "small"]
    loaded = load_classifier(tmp_path / "own")
    assert loaded.labels == ("big", "small") and loaded.config.labels == ("big", "small")
    assert loaded.predict(*_inputs(3)).shape == (3, 2)


@pytest.mark.parametrize(
    "changes,field",
    [({"labels": ()}, "labels"), ({"labels": ("a", "a")}, "labels"), ({"block_config": ()}, "block_config")],
)
def test_invalid_classifier_configs(changes, field):
    import dataclasses

    from boed.config import ConfigError

    with pytest.raises(ConfigError) as info:
        dataclasses.replace(classifier_preset("tiny"), **changes)
    assert info.value.field == field


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
