"""Phantom generator v2 (graded difficulty, ChestX-ray14 prevalences and co-occurrence, label
noise) beside an unchanged v1."""

import hashlib

import numpy as np
import pytest
import torch

from datasets import PHANTOM_SOURCES, open_dataset
from datasets.errors import DatasetError
from datasets.labels import FINDINGS, LABELS
from datasets.phantom_findings import NIH_ANY, NIH_COUNTS, NIH_IMAGES, V2_OCCLUDABLE, label_model
from datasets.phantoms import (
    BLOCK,
    VERSIONS,
    PhantomDataset,
    _PhantomsV2,
    finding_contrast,
    generate_phantoms,
)
from datasets.provenance import training_overlap


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def v2_2000(one_thread):
    return generate_phantoms(2000, 32, seed=1, version="v2")


# sha256 recorded before v2 was added (torch CPU, one thread): v1 must not change by a bit
V1_IMAGES_32 = "51a5d7dff5da8c6c9f547cb0d4a199e03e7e990ccad6582e802014861be2637b"
V1_LABELS_32 = "29a99896cd887ed0722e8904b49fd76914808fefc33951537ace216854e877b0"
V1_FINDINGS_32 = "13df2eef65e2c76e4cbe6267f4c3b498d2cad3598ddfb1d37afec05a7558b6a5"
V1_TEST_SPLIT = "4f7b0ba883cb35cd692f8e1e755f6813ae2f8dabd0204cb0c25677ea5a2c32a5"
V1_FINGERPRINT_SEED1 = "257b84d8c04edd8326b676a04a691d9e71a56dabcbb896f11316564d0d23cadd"


def test_v1_unchanged(one_thread):
    for kwargs in ({"version": "v1"},):
        b = generate_phantoms(8, size=32, seed=3, **kwargs)
        assert _sha(b.images) == V1_IMAGES_32
        assert _sha(b.labels) == V1_LABELS_32
        assert hashlib.sha256(repr(b.findings).encode()).hexdigest() == V1_FINDINGS_32
    for ds in (
        PhantomDataset("test", size=32, n=70, seed=1, version="v1"),
        open_dataset("phantoms-v1", split="test", size=32, n=70, seed=1),
    ):
        assert _sha(ds.tensors()[0]) == V1_TEST_SPLIT
        assert ds.describe()["fingerprint"] == V1_FINGERPRINT_SEED1
        assert ds.describe()["version"] == "v1" and ds.prevalence == 0.5


def test_v2_is_the_default_everywhere(one_thread):
    """v2 is the default task: the functions, the dataset, ``phantoms`` and ``chestxray`` (no root)."""
    from datasets.phantoms import DEFAULT_VERSION

    assert DEFAULT_VERSION == "v2" and PhantomDataset.GENERATOR == VERSIONS["v2"]
    ref = generate_phantoms(5, 16, seed=3, version="v2")
    assert torch.equal(generate_phantoms(5, 16, seed=3).images, ref.images)
    assert torch.equal(generate_phantoms(5, 16, seed=3).labels, ref.labels)
    explicit = open_dataset("phantoms-v2", split="test", size=16, n=4, seed=1)
    for name in ("phantoms", "chestxray"):
        ds = open_dataset(name, split="test", size=16, n=4, seed=1)
        assert ds.describe() == explicit.describe() and ds.describe()["version"] == "v2"
        assert torch.equal(ds.tensors()[0], explicit.tensors()[0])
    assert PhantomDataset("val", size=16, n=2).describe()["generator"] == "datasets.phantoms v2"


def test_v2_deterministic_prefix_stable_and_not_v1(one_thread):
    a = generate_phantoms(BLOCK + 3, 32, seed=5, version="v2")
    b = generate_phantoms(4, 32, seed=5, version="v2")
    assert torch.equal(a.images[:4], b.images) and torch.equal(a.labels[:4], b.labels)
    assert a.findings[:4] == b.findings
    assert not torch.equal(b.images, generate_phantoms(4, 32, seed=6, version="v2").images)
    assert not torch.equal(b.images, generate_phantoms(4, 32, seed=5, version="v1").images)
    assert 0 <= a.images.min() and a.images.max() <= 1


def test_prevalences_are_chestxray14s(v2_2000):
    got = v2_2000.labels.mean(0).numpy()
    want = [NIH_COUNTS[f] / NIH_IMAGES for f in FINDINGS] + [NIH_ANY]
    assert NIH_ANY == pytest.approx(51_759 / 112_120)
    for name, g, w in zip(LABELS, got, want, strict=True):
        tol = 4 * np.sqrt(w * (1 - w) / 2000) + 0.003
        assert abs(g - w) < tol, (name, g, w)
    # labels per positive image: ChestX-ray14's mean 81,176 / 51,759
    positive = v2_2000.labels[:, -1] == 1
    assert v2_2000.labels[positive, :-1].sum(1).mean() == pytest.approx(81_176 / 51_759, abs=0.08)
    # the calibrated model is exact
    model = label_model()
    assert model.marginal * NIH_ANY == pytest.approx([NIH_COUNTS[f] / NIH_IMAGES for f in FINDINGS], rel=1e-4)


def test_findings_co_occur_as_built(v2_2000):
    lab = v2_2000.labels[:, :-1].numpy().astype(bool)
    model, flat = label_model(), label_model(affinity={})  # flat: same marginals, no affinities
    assert flat.marginal == pytest.approx(model.marginal, rel=1e-4)
    for a, b in (("Effusion", "Atelectasis"), ("Infiltration", "Pneumonia"), ("Mass", "Nodule")):
        i, j = FINDINGS.index(a), FINDINGS.index(b)
        both = (lab[:, i] & lab[:, j]).mean()
        expected = NIH_ANY * model.pair[i, j]
        assert abs(both - expected) < 4 * np.sqrt(expected * (1 - expected) / 2000), (a, b, both, expected)
        # the affinity at work: far more often together than without it (same marginals)
        assert model.pair[i, j] > 1.4 * flat.pair[i, j], (a, b)
        assert both > 1.25 * NIH_ANY * flat.pair[i, j], (a, b, both)
    # a pair without affinity is not lifted
    i, j = FINDINGS.index("Hernia"), FINDINGS.index("Pneumothorax")
    assert model.pair[i, j] < 1.2 * flat.pair[i, j]


def test_boxes_inside_the_image_and_findings_are_the_truth(v2_2000):
    for i, found in enumerate(v2_2000.findings[:400]):
        assert {f.name for f in found} == {
            n for n, v in zip(FINDINGS, v2_2000.labels[i, :-1].tolist(), strict=True) if v == 1
        }
        for f in found:
            r0, c0, r1, c1 = f.bbox
            assert 0 <= r0 < r1 <= 32 and 0 <= c0 < c1 <= 32
    assert torch.equal(v2_2000.labels[:, -1], (v2_2000.labels[:, :-1].sum(1) > 0).float())


def test_label_noise_rate_and_images_unchanged(one_thread):
    clean = generate_phantoms(200, 16, seed=2, version="v2")
    noisy = generate_phantoms(200, 16, seed=2, version="v2", label_noise=0.2)
    assert torch.equal(clean.images, noisy.images) and clean.findings == noisy.findings
    flipped = (clean.labels[:, :-1] != noisy.labels[:, :-1]).float().mean()
    assert abs(float(flipped) - 0.2) < 4 * np.sqrt(0.2 * 0.8 / (200 * 14))
    assert torch.equal(noisy.labels[:, -1], (noisy.labels[:, :-1].sum(1) > 0).float())
    ds = PhantomDataset("val", size=16, n=5, version="v2", label_noise=0.1)
    assert ds.describe()["label_noise"] == 0.1
    assert (
        ds.describe()["fingerprint"]
        == PhantomDataset("val", size=16, n=5, version="v2").describe()["fingerprint"]
    )
    with pytest.raises(DatasetError, match="label_noise needs phantom version v2"):
        PhantomDataset(version="v1", label_noise=0.1)
    with pytest.raises(DatasetError, match=r"label_noise must be in \[0, 0.5\]"):
        open_dataset("phantoms-v2", label_noise=0.7)


def test_occluded_findings_lie_behind_heart_or_diaphragm(one_thread):
    p = _PhantomsV2(BLOCK, 32, torch.Generator().manual_seed(1), 1.0)
    hidden_share = {}
    for name in ("Nodule", "Mass"):
        u, v = p.point_in_lungs(name, -0.55, 0.45, 0.18, 0.72, 0.075)
        side, occ = p.fp[name]["side"], p.fp[name]["occluded"]
        hidden = (p.heart(u, v) > 0.5) | (v > p.dome(side, side * u))
        hidden_share[name] = (hidden[occ].float().mean(), hidden[~occ].float().mean())
        assert 0.15 < occ.float().mean() < 0.45
    # nearly every occluded finding is hidden (a few fall back to a visible point), no visible one is
    assert all(a > 0.7 and b == 0 for a, b in hidden_share.values()), hidden_share
    assert set(V2_OCCLUDABLE) <= set(FINDINGS)
    assert not p.fp["Effusion"]["occluded"].any()


def test_v2_is_harder_to_see_and_never_saturates(one_thread):
    v1, v2 = (generate_phantoms(64, 32, seed=4, version=v).images for v in ("v1", "v2"))
    assert (v1 >= 0.999).float().mean() > 0.005  # v1: heart, spine and abdomen burn out
    assert (v2 >= 0.999).float().mean() < 0.002
    c1, c2 = (finding_contrast(32, 32, seed=4, version=v) for v in ("v1", "v2"))
    m1 = np.mean([c["mean"] for c in c1.values()])
    m2 = np.mean([c["mean"] for c in c2.values()])
    assert m2 < 0.75 * m1, (m1, m2)
    assert "Cardiomegaly" not in c2


def test_version_in_describe_fingerprint_and_open_dataset():
    assert set(PHANTOM_SOURCES) == {"phantoms-v1", "phantoms-v2"}
    v1 = open_dataset("phantoms-v1", split="test", size=16, n=3, seed=2).describe()
    v2 = open_dataset("phantoms-v2", split="test", size=16, n=3, seed=2).describe()
    assert v1["generator"] == VERSIONS["v1"] and v2["generator"] == VERSIONS["v2"] == "datasets.phantoms v2"
    assert v2["version"] == "v2" and v2["source"] == "phantoms"
    assert v2["prevalence"] == pytest.approx(NIH_ANY)
    assert v1["fingerprint"] != v2["fingerprint"]
    # a v1-trained checkpoint's record does not claim v2 test images as its own
    trained = {"train": open_dataset("phantoms-v1", split="test", size=16, n=3, seed=2).describe()}
    assert training_overlap(trained, v1) is not None and training_overlap(trained, v2) is None
    # v2 streams are disjoint from v1's: different images for the same seed and split
    a = PhantomDataset("train", size=16, n=2, seed=0, version="v1").tensors()[0]
    b = PhantomDataset("train", size=16, n=2, seed=0, version="v2").tensors()[0]
    assert not torch.equal(a, b)
    with pytest.raises(DatasetError, match="unknown phantom version 'v3'"):
        PhantomDataset(version="v3")
    with pytest.raises(DatasetError, match="unknown image source 'phantoms-v3'.*phantoms-v2"):
        open_dataset("phantoms-v3")


def test_v2_rendering_in_slices_is_exact_and_labels_do_not_depend_on_size(one_thread):
    def block():
        return _PhantomsV2(6, 40, torch.Generator().manual_seed(3), 0.9, 0.1)

    whole = block().render()
    p = block()
    parts = [p.select(0, 2).render(), p.select(2, 6).render()]
    assert torch.equal(whole[0], torch.cat([parts[0][0], parts[1][0]]))
    assert torch.equal(whole[1], torch.cat([parts[0][1], parts[1][1]]))
    assert whole[2] == parts[0][2] + parts[1][2]
    small, big = (generate_phantoms(3, s, seed=2, version="v2") for s in (16, 48))
    assert torch.equal(small.labels, big.labels)
