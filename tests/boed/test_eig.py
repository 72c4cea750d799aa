"""EIG (Eq. 17) against exact mutual information in a small discrete world, and its mechanics."""

import pytest
import torch

from boed.eig import (
    EIG,
    expected_information_gain,
    expected_information_gain_loop,
    resolve_target,
    target_entropy,
    view_representatives,
)
from boed.errors import BoedError
from boed.protocols import Completions
from boed.scanner import CandidateGrid
from datasets.labels import LABELS
from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyWorld, exact_mutual_information

# known-answer cases: (world seed, scanned candidates before the decision, target)
CASES = [
    (0, [], "any"),
    (0, [0], "any"),
    (1, [], "Effusion"),
    (2, [2], "all"),
    (4, [0, 8], "any"),
    (5, [2], "all"),
]
EXACT_TOL = 1e-5  # exact enumeration: float32 classifier outputs only
MC_TOL = 0.03  # 4,000 posterior samples: Monte Carlo error of the mean (nats)


def _setup(seed, scanned):
    world = ToyWorld(seed=seed)
    grid = CandidateGrid.from_grid(world.size, world.patch, grid=3)
    image = world.images[1:2]
    mask = torch.zeros_like(image)
    for c in scanned:
        mask = torch.maximum(mask, grid.masks[c : c + 1])
    return world, grid, image * mask, mask


def _distinct_views(images, mask, masks):
    """Brute force: distinct classifier inputs ``(I_n * m_c, m_c)`` over candidates revealing something."""
    seen = set()
    for cand in masks:
        m_c = torch.maximum(mask[0], cand)
        if torch.equal(m_c, mask[0]):
            continue
        seen |= {(m_c.numpy().tobytes(), (image * m_c).numpy().tobytes()) for image in images}
    return len(seen)


def _indices(target):
    return list(resolve_target(target, LABELS).indices)


@pytest.mark.parametrize("seed,scanned,target", CASES)
def test_eig_equals_exact_mutual_information(seed, scanned, target):
    world, grid, observed, mask = _setup(seed, scanned)
    clf = BayesClassifier(world)
    comps = PosteriorSampler(world, exact=True).sample(observed, mask, 0)
    eig, ig = expected_information_gain(clf, observed, mask, comps, grid, target)
    truth = exact_mutual_information(world, observed, mask, grid.masks, _indices(target))
    assert ig.shape == (comps.images.shape[0], len(grid))
    torch.testing.assert_close(eig, truth, atol=EXACT_TOL, rtol=0)
    assert truth.max() > 0.05  # the case is not trivial


@pytest.mark.parametrize("seed,scanned,target", CASES[:3])
def test_eig_with_sampled_completions_converges(seed, scanned, target):
    world, grid, observed, mask = _setup(seed, scanned)
    comps = PosteriorSampler(world).sample(observed, mask, 4000, generator=torch.Generator().manual_seed(0))
    eig, _ = expected_information_gain(BayesClassifier(world), observed, mask, comps, grid, target)
    truth = exact_mutual_information(world, observed, mask, grid.masks, _indices(target))
    torch.testing.assert_close(eig, truth, atol=MC_TOL, rtol=0)


def test_nothing_new_is_exactly_zero_without_classifier_calls():
    world, grid, observed, mask = _setup(0, [0, 8])
    clf = BayesClassifier(world)
    comps = PosteriorSampler(world).sample(observed, mask, 5, generator=torch.Generator().manual_seed(0))
    probs = clf.predict(observed, mask)
    clf.rows = 0
    # candidates 0 and 8 are already seen; only them: no call at all
    eig, ig = expected_information_gain(clf, observed, mask, comps, grid.masks[[0, 8]], current_probs=probs)
    assert clf.rows == 0
    assert torch.equal(eig, torch.zeros(2, dtype=torch.float64)) and torch.equal(
        ig, torch.zeros(5, 2, dtype=torch.float64)
    )
    # the full grid: calls only for the 7 candidates that reveal something new, one per distinct view
    eig, _ = expected_information_gain(clf, observed, mask, comps, grid, current_probs=probs)
    assert clf.rows == _distinct_views(comps.images[:, 0], mask, grid.masks) <= 5 * 7
    assert eig[0] == 0 and eig[8] == 0


def test_duplicate_new_masks_share_classifier_calls():
    world, grid, observed, mask = _setup(0, [])
    masks = grid.masks[[0, 0, 4, 4, 4]]
    clf = BayesClassifier(world)
    comps = PosteriorSampler(world).sample(observed, mask, 3, generator=torch.Generator().manual_seed(0))
    eig, _ = expected_information_gain(clf, observed, mask, comps, masks)
    assert clf.rows == 1 + _distinct_views(comps.images[:, 0], mask, masks)
    assert eig[0] == eig[1] and eig[2] == eig[3] == eig[4]


@pytest.mark.parametrize("budget", [1, 2 * 8 * 8 * 4 * 5, 10**9])
def test_chunking_gives_the_same_result(budget):
    world, grid, observed, mask = _setup(2, [2])
    comps = PosteriorSampler(world).sample(observed, mask, 7, generator=torch.Generator().manual_seed(3))
    clf = BayesClassifier(world)
    ref = expected_information_gain(clf, observed, mask, comps, grid, "all", memory_budget=10**12)
    got = expected_information_gain(clf, observed, mask, comps, grid, "all", memory_budget=budget)
    assert torch.equal(ref.eig, got.eig) and torch.equal(ref.ig, got.ig)


def test_batched_equals_per_candidate_loop():
    world, grid, observed, mask = _setup(3, [2])
    comps = PosteriorSampler(world).sample(observed, mask, 4, generator=torch.Generator().manual_seed(1))
    clf = BayesClassifier(world)
    fast = expected_information_gain(clf, observed, mask, comps, grid, "any")
    slow = expected_information_gain_loop(clf, observed, mask, comps, grid, "any")
    torch.testing.assert_close(fast.eig, slow.eig, atol=1e-9, rtol=0)
    torch.testing.assert_close(fast.ig, slow.ig, atol=1e-9, rtol=0)


def test_weights():
    world, grid, observed, mask = _setup(0, [])
    clf = BayesClassifier(world)
    comps = PosteriorSampler(world).sample(observed, mask, 4, generator=torch.Generator().manual_seed(0))
    plain = expected_information_gain(clf, observed, mask, comps, grid)
    torch.testing.assert_close(plain.eig, plain.ig.mean(0))
    same = expected_information_gain(clf, observed, mask, comps, grid, log_weights=torch.full((4, 1), 3.0))
    torch.testing.assert_close(same.eig, plain.eig)
    one = expected_information_gain(
        clf, observed, mask, comps, grid, log_weights=torch.tensor([0.0, -torch.inf, -torch.inf, -torch.inf])
    )
    torch.testing.assert_close(one.eig, plain.ig[0])
    lw = torch.tensor([0.0, 1.0, 2.0, -1.0])
    w = torch.softmax(lw.double(), 0)
    got = expected_information_gain(clf, observed, mask, comps, grid, log_weights=lw)
    torch.testing.assert_close(got.eig, (w[:, None] * plain.ig).sum(0))
    with pytest.raises(BoedError, match="log-weights"):
        expected_information_gain(clf, observed, mask, comps, grid, log_weights=torch.zeros(3))


def test_targets():
    assert resolve_target("any", LABELS).indices == (14,)
    assert resolve_target("ALL", LABELS).indices == tuple(range(14))
    assert resolve_target("effusion", LABELS) == resolve_target("Effusion", LABELS)
    with pytest.raises(BoedError, match="valid targets: any, all, Atelectasis"):
        resolve_target("Cancer", LABELS)
    probs = torch.full((1, 15), 0.5)
    torch.testing.assert_close(
        target_entropy(probs, resolve_target("all", LABELS)),
        torch.tensor([14 * 0.6931471805599453], dtype=torch.float64),
    )


def test_all_target_is_sum_of_finding_targets():
    world, grid, observed, mask = _setup(2, [])
    comps = PosteriorSampler(world, exact=True).sample(observed, mask, 0)
    clf = BayesClassifier(world)
    total = expected_information_gain(clf, observed, mask, comps, grid, "all").eig
    parts = sum(
        expected_information_gain(clf, observed, mask, comps, grid, f).eig for f in ("Effusion", "Nodule")
    )
    torch.testing.assert_close(total, parts, atol=1e-6, rtol=0)


def test_shape_errors():
    world, grid, observed, mask = _setup(0, [])
    clf = BayesClassifier(world)
    with pytest.raises(BoedError, match="do not match"):
        expected_information_gain(clf, observed, mask, torch.zeros(3, 1, 4, 4), grid)
    with pytest.raises(BoedError, match="one image"):
        expected_information_gain(clf, observed.repeat(2, 1, 1, 1), mask, torch.zeros(3, 1, 8, 8), grid)
    assert isinstance(expected_information_gain(clf, observed, mask, world.images[:3], grid), EIG)


def test_targets_come_from_the_classifier_labels():
    from boed.eig import valid_targets

    own = ["big", "bright"]
    assert resolve_target("BIG", own) == resolve_target("big", own)
    assert resolve_target("big", own).indices == (0,) and resolve_target("big", own).name == "big"
    assert (
        resolve_target("all", own).indices == (0, 1) and resolve_target("all", own).title == "all (2 labels)"
    )
    assert valid_targets(own) == ["all", "big", "bright"]
    with pytest.raises(BoedError, match="target 'any' needs a classifier with an 'Any' output.*big, bright"):
        resolve_target("any", own)
    with pytest.raises(BoedError, match="valid targets: all, big, bright$"):
        resolve_target("Mass", own)
    # the canonical name is the classifier's spelling, so runs store "Any", not "any"
    assert resolve_target("any", LABELS).name == "Any" and resolve_target("mass", LABELS).name == "Mass"
    assert resolve_target("all", LABELS).labels == tuple(LABELS[:14])
    assert resolve_target("any", ["big", "Any"]).indices == (1,)
    assert resolve_target("all", ["big", "Any"]).indices == (0,)
    with pytest.raises(BoedError, match="needs a label other than Any"):
        resolve_target("all", ["Any"])


def test_non_finite_inputs_are_refused():
    world, grid, observed, mask = _setup(0, [])
    clf = BayesClassifier(world)
    comps = PosteriorSampler(world, exact=True).sample(observed, mask, 0)
    lw = comps.log_weights.clone()
    lw[0] = float("nan")
    with pytest.raises(BoedError, match="NaN or \\+inf log-weights"):
        expected_information_gain(clf, observed, mask, comps.images, grid, log_weights=lw)
    bad = comps.images.clone()
    bad[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(BoedError, match="non-finite completions: 1 of .* are infinite"):
        expected_information_gain(clf, observed, mask, bad, grid)
    with pytest.raises(BoedError, match="non-finite probabilities on the observation"):
        expected_information_gain(
            clf, observed, mask, comps, grid, current_probs=torch.full((1, 15), float("nan"))
        )


def test_completions_that_agree_on_a_view_share_one_call():
    # every consistent state once, importance-weighted: distinct states show the same values in
    # some blocks, so some candidates' views coincide across completions and others do not
    world, grid, observed, mask = _setup(0, [0])
    comps = PosteriorSampler(world, exact=True).sample(observed, mask, 0)
    n = comps.images.shape[0]
    clf = BayesClassifier(world)
    probs = clf.predict(observed, mask)
    clf.rows = 0
    fast = expected_information_gain(clf, observed, mask, comps, grid, "any", current_probs=probs)
    assert clf.rows == _distinct_views(comps.images[:, 0], mask, grid.masks) < n * (len(grid) - 1)
    slow = expected_information_gain_loop(clf, observed, mask, comps, grid, "any")
    torch.testing.assert_close(fast.eig, slow.eig, atol=1e-9, rtol=0)
    torch.testing.assert_close(fast.ig, slow.ig, atol=1e-9, rtol=0)


def test_deterministic_completions_need_one_call_per_view():
    world, grid, observed, mask = _setup(1, [])
    comps = Completions(world.images[2:3].repeat(6, 1, 1, 1)[:, None])  # six identical completions
    clf = BayesClassifier(world)
    fast = expected_information_gain(clf, observed, mask, comps, grid, "any")
    assert clf.rows == 1 + len(grid)  # the observation, then one view per candidate
    slow = expected_information_gain_loop(clf, observed, mask, comps, grid, "any")
    torch.testing.assert_close(fast.ig, slow.ig, atol=1e-9, rtol=0)


def test_completions_differing_on_the_observation_are_not_merged():
    # a sampler that breaks the contract (observed pixels not pasted): views differ on m itself
    world, grid, observed, mask = _setup(0, [0])
    images = world.images[3:4].repeat(2, 1, 1, 1)
    images[1, :, :4, :4] = 1.0 - images[1, :, :4, :4]  # inside the observed block only
    rep = view_representatives(images, (torch.maximum(mask, grid.masks) > 0.5), mask > 0.5)
    assert torch.equal(rep, torch.arange(2).expand(len(grid), 2))
    same = view_representatives(images[:1].repeat(3, 1, 1, 1), grid.masks > 0.5, mask > 0.5)
    assert torch.equal(same, torch.zeros(len(grid), 3, dtype=torch.long))


@pytest.mark.parametrize("budget", [1, 4 * 64 * 3, 2**26])
def test_view_representatives_chunking(budget):
    # five completions; 1 == 3 on block (1, 0); 0 == 2 == 4 everywhere but block (1, 1) of 4
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 1, 8, 8, generator=g)
    images[2] = images[0]
    images[4] = images[0]
    images[4, :, 4:, 4:] += 1
    images[3, :, 4:, :4] = images[1, :, 4:, :4]
    base = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    blocks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        blocks[k, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = True
    rep = view_representatives(images, blocks, base, memory_budget=budget)
    expected = torch.tensor([[0, 1, 0, 3, 0], [0, 1, 0, 3, 0], [0, 1, 0, 1, 0], [0, 1, 0, 3, 4]])
    assert torch.equal(rep, expected)
