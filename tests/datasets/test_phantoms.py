"""Chest radiograph phantoms: conventions, determinism, prevalence, and findings that are
localized (visible in a scan that covers them, invisible elsewhere)."""

import pytest
import torch
import torch.nn.functional as F

from datasets.labels import FINDINGS, LABELS
from datasets.phantoms import BLOCK, FINDING_WEIGHTS, Finding, PhantomBatch, _Phantoms
from datasets.phantoms import generate_phantoms as _generate


def generate_phantoms(*args, **kwargs) -> PhantomBatch:
    """These are v1's tests (v1 is no longer the default version: v2 is, tested in test_phantoms_v2)."""
    return _generate(*args, version="v1", **kwargs)


@pytest.fixture(scope="module")
def batch64() -> PhantomBatch:
    return generate_phantoms(128, 64, seed=11)


def test_conventions(batch64):
    assert isinstance(batch64, PhantomBatch)
    img, lab = batch64.images, batch64.labels
    assert img.shape == (128, 1, 64, 64) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1
    assert lab.shape == (128, len(LABELS)) and lab.dtype == torch.float32
    assert not lab.isnan().any() and set(lab.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(lab[:, -1], (lab[:, :-1].sum(1) > 0).float())  # Any
    assert len(batch64.findings) == 128


def test_findings_match_labels_and_lie_inside_the_chest(batch64):
    for i, found in enumerate(batch64.findings):
        names = {f.name for f in found}
        assert names == {n for n, v in zip(FINDINGS, batch64.labels[i, :-1].tolist(), strict=True) if v == 1}
        for f in found:
            assert isinstance(f, Finding)
            r0, c0, r1, c1 = f.bbox
            assert 0 <= r0 < r1 <= 64 and 0 <= c0 < c1 <= 64
            # not in the image corners: the centre of every finding lies in the middle 80%
            rc, cc = (r0 + r1) / 2, (c0 + c1) / 2
            assert 6 < rc < 58 and 6 < cc < 58, (f, i)


def test_deterministic_and_prefix_stable():
    a = generate_phantoms(BLOCK + 6, 32, seed=4)
    b = generate_phantoms(5, 32, seed=4)
    assert torch.equal(a.images[:5], b.images) and torch.equal(a.labels[:5], b.labels)
    assert a.findings[:5] == b.findings
    c = generate_phantoms(5, 32, seed=5)
    assert not torch.equal(b.images, c.images)
    assert generate_phantoms(0, 32).images.shape == (0, 1, 32, 32)


@pytest.mark.parametrize("size", [16, 48, 100, 256])
def test_any_size(size):
    b = generate_phantoms(2, size, seed=1)
    assert b.images.shape == (2, 1, size, size) and 0 <= b.images.min() and b.images.max() <= 1


def test_same_patient_at_every_size():
    small = generate_phantoms(3, 64, seed=2)
    big = generate_phantoms(3, 256, seed=2)
    assert torch.equal(small.labels, big.labels)
    down = F.avg_pool2d(big.images, 4)
    assert (down - small.images).abs().mean() < 0.03
    for fs, fb in zip(small.findings, big.findings, strict=True):
        for a, b in zip(fs, fb, strict=True):
            assert a.name == b.name
            assert all(abs(x * 4 - y) <= 12 for x, y in zip(a.bbox, b.bbox, strict=True))


@pytest.mark.parametrize("prevalence", [0.0, 0.3, 1.0])
def test_prevalence(prevalence):
    lab = generate_phantoms(256, 16, seed=3, prevalence=prevalence).labels
    assert abs(lab[:, -1].mean().item() - prevalence) < 0.08
    if prevalence == 1.0:
        assert (lab[:, :-1].sum(1) >= 1).all() and (lab[:, :-1].sum(1) >= 2).any()  # co-occurrence


def test_every_label_is_simulated():
    lab = generate_phantoms(640, 16, seed=0, prevalence=1.0).labels
    assert set(FINDING_WEIGHTS) == set(FINDINGS)
    assert (lab[:, :-1].sum(0) > 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_phantoms(1, 8)
    with pytest.raises(ValueError):
        generate_phantoms(1, 32, prevalence=1.5)


def test_plausible_radiograph_layout():
    img = generate_phantoms(64, 64, seed=7, prevalence=0.0).images[:, 0].mean(0)
    air = img[30:50, :2].mean()  # outside the body, beside the chest
    lungs = (img[18:34, 12:20].mean() + img[18:34, 44:52].mean()) / 2
    mediastinum = img[10:30, 30:34].mean()
    abdomen = img[58:, 20:44].mean()
    assert air < 0.15 < lungs < mediastinum and lungs < abdomen
    assert (img[25, 10:22] < img[25, 30:34].mean()).all()  # right lung darker than the spine


def _with_and_without(seed, size, names):
    """Images of the same patients with one finding each, and without any."""
    m = len(names)
    p = _Phantoms(m, size, torch.Generator().manual_seed(seed), 0.5)
    q = _Phantoms(m, size, torch.Generator().manual_seed(seed), 0.5)
    p.present[:] = False
    q.present[:] = False
    for i, name in enumerate(names):
        p.present[i, FINDINGS.index(name)] = True
    p.heart_w = torch.where(p.present[:, 1, None, None], torch.full_like(p.heart_w, 0.6), p.heart_w)
    img, _, found = p.render()
    clean, _, _ = q.render()
    return img[:, 0], clean[:, 0], found


@pytest.mark.parametrize("size", [64, 256])
def test_findings_are_localized_and_visible(size):
    names = [f for f in FINDINGS for _ in range(2 if size == 64 else 1)]
    img, clean, found = _with_and_without(21, size, names)
    patch = size // 4
    for i, name in enumerate(names):
        (f,) = found[i]
        assert f.name == name
        diff = (img[i] - clean[i]).abs()
        r0, c0, r1, c1 = f.bbox
        pad = max(2, size // 32)
        inside = diff[max(0, r0 - pad) : r1 + pad, max(0, c0 - pad) : c1 + pad].sum()
        assert inside / diff.sum() > 0.9, (name, size)  # mostly invisible outside its box
        # the best scan (a patch of 25% of the image) over the finding sees a clear change
        window_mean = F.avg_pool2d(diff[None, None], patch, stride=1)[0, 0]
        best = int(window_mean.argmax())
        rs, cs = divmod(best, window_mean.shape[1])
        assert rs < r1 and rs + patch > r0 and cs < c1 and cs + patch > c0  # it overlaps the box
        seen = diff[rs : rs + patch, cs : cs + patch]
        assert seen.max() > 0.1 and seen.mean() > 0.015, (name, size, seen.max().item(), seen.mean().item())


def test_finding_positions_vary():
    b = generate_phantoms(256, 64, seed=9, prevalence=1.0)
    centres = {}
    for found in b.findings:
        for f in found:
            r0, c0, r1, c1 = f.bbox
            centres.setdefault(f.name, []).append(((r0 + r1) / 2, (c0 + c1) / 2))
    for name in ("Nodule", "Mass", "Consolidation", "Pneumothorax", "Effusion"):
        pts = torch.tensor(centres[name])
        assert pts[:, 1].std() > 6, name  # both sides of the chest and different places
    nod = torch.tensor(centres["Nodule"])
    assert nod[:, 0].std() > 5


def test_rendering_in_slices_is_exact():
    # large images are rendered a few at a time; every random draw happens before rendering
    def block():
        return _Phantoms(6, 40, torch.Generator().manual_seed(3), 0.9)

    whole = block().render()
    p = block()
    parts = [p.select(0, 2).render(), p.select(2, 6).render()]
    assert torch.equal(whole[0], torch.cat([parts[0][0], parts[1][0]]))
    assert torch.equal(whole[1], torch.cat([parts[0][1], parts[1][1]]))
    assert whole[2] == parts[0][2] + parts[1][2]


# sha256 of images, labels and findings of generate_phantoms(n, size, seed, prevalence), recorded
# before datasets/phantoms.py was split into phantom_anatomy / phantom_findings / phantoms
# (torch 2.13 CPU, one thread): the split must leave every pixel as it was. The pixels depend on
# torch's CPU kernels: on AVX-512 its bicubic interpolation rounds differently from AVX2 in the
# last bit (up to 7.5e-8 on 0.006 % of the pixels of the 100 px case; labels and findings equal),
# so the digests are per torch.backends.cpu.get_cpu_capability(). The AVX512 ones were recorded
# from the split code on an AVX-512 machine whose AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) give the
# pre-split AVX2 digests.
BEFORE_SPLIT = {
    (70, 64, 3, 0.5): "5e233ede961fb81554ca55165f3f68fce6b7f97baf5744f8bd585112e2d8256a",
    (20, 32, 0, 0.9): "6ab52e20dc4718eaad1b28e303859e3897f454700504b86be4ccb33fd2ca62fc",
    (5, 100, 7, 1.0): "1d3549d0d8a7fa677ad3c7744c39b2d7abe0ae6e33e04acabe42786129882e51",
}
ON_AVX512 = BEFORE_SPLIT | {
    (5, 100, 7, 1.0): "a0b665baa1d1ba036caa6314d506c4b10c33146ed7b891ae3bcb9b47a8071d33",
}
DIGESTS = {"AVX2": BEFORE_SPLIT, "AVX512": ON_AVX512}


@pytest.mark.parametrize("args", sorted(BEFORE_SPLIT))
def test_images_bit_identical_to_before_the_module_split(args):
    import hashlib

    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in DIGESTS:
        pytest.skip(f"digests recorded for AVX2 and AVX512 CPU kernels only, not {capability}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = generate_phantoms(*args)
    finally:
        torch.set_num_threads(before)
    digest = hashlib.sha256(
        batch.images.numpy().tobytes() + batch.labels.numpy().tobytes() + repr(batch.findings).encode()
    ).hexdigest()
    assert digest == DIGESTS[capability][args]


def test_public_names_still_import_from_datasets_phantoms():
    from datasets import phantom_anatomy, phantom_findings, phantoms

    assert (
        phantoms.Finding is phantom_findings.Finding
        and phantoms.FINDING_WEIGHTS is phantom_findings.FINDING_WEIGHTS
    )
    assert issubclass(_Phantoms, phantom_anatomy.AnatomyMixin) and issubclass(
        _Phantoms, phantom_findings.FindingsMixin
    )
    assert not hasattr(_Phantoms, "truncate")
