"""Inference runtimes of the classifier: same probabilities and the same decisions as eager fp32."""

import sys

import pytest
import torch

from classifiers.avp_cnn import AVPCNN
from classifiers.config import classifier_preset
from classifiers.errors import ClassifierError
from classifiers.partial import PartialClassifier, load_classifier
from classifiers.runtime import RuntimeClassifier, decision_set, location_agreement, with_runtime


def _tiny(chunk_size=None):
    torch.manual_seed(0)
    return PartialClassifier(AVPCNN(classifier_preset("tiny")), temperature=1.7, chunk_size=chunk_size)


def _inputs(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    m = (torch.rand(n, 1, size, size, generator=g) > 0.6).float()
    return x * m, m


def test_eager_fp32_is_the_classifier_itself():
    clf = _tiny()
    assert with_runtime(clf, "eager") is clf
    other = object()  # any Classifier: the reference needs no AVP-CNN; another runtime does
    assert with_runtime(other, "eager") is other
    with pytest.raises(ClassifierError, match="--runtime onnx needs an AVP-CNN classifier"):
        with_runtime(other, "onnx")


@pytest.mark.parametrize("n,chunk", [(1, None), (7, 3), (40, 16)])
def test_onnx_gives_the_eager_probabilities(n, chunk):
    pytest.importorskip("onnxruntime")
    clf = _tiny(chunk)
    fast = with_runtime(clf, "onnx")
    assert isinstance(fast, RuntimeClassifier) and fast.labels == clf.labels and fast.name == clf.name
    x, m = _inputs(n)
    ref = clf.predict(x, m)
    got = fast.predict(x, m)
    assert got.shape == ref.shape == (n, len(clf.labels))
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
    # the temperature is applied: not the untempered sigmoid
    assert not torch.allclose(got, torch.sigmoid(clf.logits(x, m)), atol=1e-3)
    with pytest.raises(ClassifierError, match="trained on 32x32"):
        fast.predict(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))


def test_bf16_autocast_stays_close_on_cpu():
    clf = _tiny()
    half = with_runtime(clf, "eager", precision="bf16")
    x, m = _inputs(8)
    got = half.predict(x, m)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, clf.predict(x, m), atol=0.05, rtol=0)


def test_bad_options_are_one_line_errors(monkeypatch):
    clf = _tiny()
    with pytest.raises(
        ClassifierError, match="unknown --runtime 'tensorrt'; valid runtimes: eager, compile, onnx"
    ):
        with_runtime(clf, "tensorrt")
    with pytest.raises(ClassifierError, match="unknown --precision"):
        with_runtime(clf, "eager", precision="fp8")
    with pytest.raises(ClassifierError, match="not onnx"):
        with_runtime(clf, "onnx", precision="bf16")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ClassifierError, match=r"--runtime onnx needs onnxruntime .*boed-xray\[onnx\]"):
        with_runtime(clf, "onnx")


def test_onnx_chooses_the_eager_locations_on_a_fixed_set_of_decisions():
    pytest.importorskip("onnxruntime")
    clf = load_classifier(None, preset="cpu")
    candidates, decisions = decision_set(20, grid=7, n_completions=4)
    result = location_agreement(clf, with_runtime(clf, "onnx"), candidates, decisions)
    assert result["decisions"] == 20
    assert result["agreement"] >= 0.99
    assert result["max_abs_eig_difference"] < 1e-4


def test_location_agreement_detects_a_different_classifier():
    clf = load_classifier(None, preset="cpu")
    torch.manual_seed(1)
    other = PartialClassifier(AVPCNN(clf.config))  # untrained: different EIG maps
    candidates, decisions = decision_set(6, grid=5, n_completions=3)
    result = location_agreement(clf, other, candidates, decisions)
    assert result["agreement"] < 1 and result["max_abs_eig_difference"] > 1e-3


@pytest.mark.slow
def test_compile_chooses_the_eager_locations():
    clf = load_classifier(None, preset="cpu")
    candidates, decisions = decision_set(10, grid=5, n_completions=3)
    result = location_agreement(clf, with_runtime(clf, "compile"), candidates, decisions)
    assert result["agreement"] >= 0.99 and result["max_abs_eig_difference"] < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("runtime", ["eager", "compile"])
def test_bf16_on_a_gpu_chooses_the_fp32_locations(runtime):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    clf = load_classifier(None, preset="cpu", device="cuda")
    candidates, decisions = decision_set(40, grid=17, n_completions=10)
    decisions = [(o.cuda(), m.cuda(), c._replace(images=c.images.cuda())) for o, m, c in decisions]
    result = location_agreement(clf, with_runtime(clf, runtime, precision="bf16"), candidates, decisions)
    assert result["agreement"] >= 0.95
