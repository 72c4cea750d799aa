"""boed.acquisition: the batched EIG, the controller, the scan environment, k scans per step."""

import math

import gymnasium
import numpy as np
import pytest
import torch

from boed.acquisition import Controller, ScanEnv, greedy_scans, run_episodes
from boed.eig import (
    eig_standard_error,
    expected_information_gain,
    expected_information_gain_batch,
    resolve_target,
    target_entropy,
)
from boed.errors import BoedError
from boed.policies import POLICIES, BatchState, StoppingRule, choose_batch, get_policy
from boed.scanner import CandidateGrid, Scanner
from boed.session import prior_decision, run_session
from boed.simulate import SimulationConfig, run_simulation
from tests.boed.toys import (
    BayesClassifier,
    FakeStore,
    NaNSampler,
    PosteriorSampler,
    ToyDataset,
    ToyWorld,
    exact_mutual_information,
)


@pytest.fixture
def world():
    return ToyWorld(size=16, patch=4, seed=3, findings=("Effusion", "Nodule", "Mass"), n_nuisance=2)


@pytest.fixture
def grid(world):
    return CandidateGrid.from_grid(world.size, world.patch, grid=4)


def _views(world, grid, scanned_per_image):
    images = world.images[: len(scanned_per_image)]
    masks = torch.zeros_like(images)
    for b, scanned in enumerate(scanned_per_image):
        for c in scanned:
            masks[b] = torch.maximum(masks[b], grid.masks[c])
    return images * masks, masks


# ---------------------------------------------------------------- batched EIG and its error
def test_batch_eig_is_the_per_image_eig_exactly(world, grid):
    observed, mask = _views(world, grid, [[], [0], [5, 6], [0, 1, 2, 3]])
    clf = BayesClassifier(world)
    for sampler in (PosteriorSampler(world, exact=True), PosteriorSampler(world)):
        comps = [
            sampler.sample(observed[b : b + 1], mask[b : b + 1], 5, torch.Generator().manual_seed(b))
            for b in range(4)
        ]
        got = expected_information_gain_batch(clf, observed, mask, comps, grid, "all")
        for b in range(4):
            one = expected_information_gain(clf, observed[b : b + 1], mask[b : b + 1], comps[b], grid, "all")
            assert torch.equal(got.eig[b], one.eig) and torch.equal(got.ig[b], one.ig)
        assert got.eig[3, :4].eq(0).all()  # already seen: exactly zero


def test_batch_eig_calls_the_classifier_across_images(world, grid):
    observed, mask = _views(world, grid, [[], [0], [5], [9]])
    comps = PosteriorSampler(world).sample(observed, mask, 3, torch.Generator().manual_seed(0))
    clf = BayesClassifier(world)
    expected_information_gain_batch(clf, observed, mask, comps, grid, memory_budget=10**9)
    assert clf.calls == 2  # the current observations, then every view of all four images in one chunk


def test_standard_error_formulas():
    ig = torch.tensor([[0.1, 0.5], [0.3, 0.5], [0.8, 0.5]], dtype=torch.float64)
    np.testing.assert_allclose(eig_standard_error(ig), np.std(ig.numpy(), axis=0, ddof=1) / math.sqrt(3))
    assert eig_standard_error(ig)[1] == 0
    lw = torch.tensor([0.0, math.log(2.0), math.log(3.0)])
    w = np.array([1, 2, 3]) / 6
    mean = (w[:, None] * ig.numpy()).sum(0)
    want = np.sqrt((w[:, None] ** 2 * (ig.numpy() - mean) ** 2).sum(0))
    np.testing.assert_allclose(eig_standard_error(ig, lw), want)
    assert torch.isnan(eig_standard_error(ig[:1])).all()  # one completion: unknown


# ---------------------------------------------------------------- the controller
def test_controller_proposes_the_eig_argmax_and_is_told_patches(world, grid):
    clf, sampler = BayesClassifier(world), PosteriorSampler(world)
    controller = Controller(sampler, clf, grid, "any", n_samples=6, seed=0, keep_completions=True)
    assert not hasattr(controller, "image")
    proposal = controller.propose()
    assert proposal.candidate == int(torch.argmax(proposal.eig))
    assert proposal.location == grid.location(proposal.candidate) and proposal.best_eig > 0
    assert proposal.stderr.shape == proposal.eig.shape and proposal.completions.images.shape[0] == 6
    blank = torch.zeros(1, 1, 16, 16)
    h0 = float(target_entropy(clf.predict(blank, blank), controller.target)[0])
    assert proposal.ig.shape == (6, len(grid)) and proposal.entropy == pytest.approx(h0)
    image = world.images[2:3]
    row, col = proposal.location
    controller.observe(proposal.location, image[0, 0, row : row + 4, col : col + 4])
    assert torch.equal(controller.mask[0], grid.masks[proposal.candidate])
    assert torch.equal(controller.observed, image * controller.mask)
    assert controller.scanned == [proposal.candidate]
    assert controller.propose().eig[proposal.candidate] == 0  # nothing new there any more


@pytest.mark.parametrize(
    "location,patch,message",
    [
        ((0, 13), torch.zeros(4, 4), r"outside \[0, 12\]"),
        ((0, 0), torch.zeros(3, 4), "the scans are 4 x 4"),
        ((0, 0), torch.full((4, 4), math.nan), "non-finite pixels"),
        ((0, 0), torch.full((4, 4), 2.0), r"outside \[0, 1\]"),
        (("a", 0), torch.zeros(4, 4), r"a scan location is \(row, col\)"),
    ],
)
def test_controller_refuses_bad_patches_and_records_nothing(world, grid, location, patch, message):
    controller = Controller(PosteriorSampler(world), BayesClassifier(world), grid, n_samples=2, seed=0)
    with pytest.raises(BoedError, match=message):
        controller.observe(location, patch)
    assert controller.mask.sum() == 0 and controller.scanned == []


def test_controller_refuses_parts_that_do_not_fit(world, grid):
    with pytest.raises(BoedError, match="valid targets"):
        Controller(PosteriorSampler(world), BayesClassifier(world), grid, "Cancer")
    with pytest.raises(BoedError, match="scans per step must be between 1 and the 16"):
        Controller(PosteriorSampler(world), BayesClassifier(world), grid, scans_per_step=17)
    other = CandidateGrid.from_grid(8, 4, grid=2)
    with pytest.raises(BoedError, match="classifier takes 16 px"):
        Controller(PosteriorSampler(world), BayesClassifier(world), other)
    controller = Controller(PosteriorSampler(world), BayesClassifier(world), grid)
    with pytest.raises(BoedError, match="only 0 .* and 1"):
        controller.propose(world.images[0], torch.full((16, 16), 0.5))
    with pytest.raises(BoedError, match="both observed and mask"):
        controller.propose(world.images[0])


def test_an_external_loop_gives_the_same_session_as_run_session(world, grid):
    """The controller driven by hand (a scanner outside it) decides what run_session decides."""
    clf, sampler = BayesClassifier(world), PosteriorSampler(world)
    image = world.images[5:6]
    logged = []
    run_session(image, classifier=clf, policy=get_policy("boed"), candidates=grid, scans=3, sampler=sampler,
                n_samples=5, generator=torch.Generator().manual_seed(11), on_step=logged.append)  # fmt: skip
    controller = Controller(sampler, clf, grid, n_samples=5, generator=torch.Generator().manual_seed(11))
    scanner = Scanner(image, grid)
    for record in logged[1:]:
        proposal = controller.propose()
        assert proposal.candidate == record.candidate and proposal.best_eig == record.eig
        scanner.scan(proposal.candidate)
        row, col = proposal.location
        controller.observe(proposal.location, scanner.observed[0, 0, row : row + 4, col : col + 4])
        assert controller.probs[0].tolist() == record.probs


# ---------------------------------------------------------------- the environment
def test_environment_follows_the_gymnasium_vector_api(world, grid):
    clf = BayesClassifier(world)
    env = ScanEnv(clf, grid, images=world.images[:3], labels=world.state_labels[:3].float(), scans=2)
    assert isinstance(env, gymnasium.vector.VectorEnv) and env.num_envs == 3
    assert env.action_space == gymnasium.spaces.MultiDiscrete([16, 16, 16])
    obs, info = env.reset(seed=5)
    assert env.observation_space.contains({k: v.numpy() for k, v in obs.items()})
    assert obs["mask"].sum() == 0 and info["probs"].shape == (3, 15)
    scored = env.try_action(torch.tensor([[0, 5], [1, 1], [15, 2]]))
    assert obs["mask"].sum() == 0  # try_action applies nothing
    obs, rewards, terminated, truncated, info = env.step(torch.tensor([5, 1, -1]))
    assert obs["mask"][0].sum() == 16 and obs["mask"][2].sum() == 0
    torch.testing.assert_close(info["probs"][0], scanned := scored["probs"][0, 1])
    assert rewards[0] == pytest.approx(float(scored["reward"][0, 1])) and rewards[2] == 0
    h = target_entropy(scanned[None], env.target)[0]
    assert float(scored["entropy"][0, 1]) == pytest.approx(float(h))
    assert not truncated.any() and not terminated.any()
    _, _, _, truncated, _ = env.step(torch.tensor([6, 2, -1]))
    assert truncated.tolist() == [True, True, False]
    assert torch.isfinite(scored["cross_entropy"]).all()
    with pytest.raises(BoedError, match="one action per episode"):
        env.step(torch.tensor([1, 2]))
    with pytest.raises(BoedError, match="out of range"):
        env.step(torch.tensor([16, 0, 0]))


def test_policies_choose_over_the_batch_as_they_choose_one_by_one(world, grid):
    clf = BayesClassifier(world)
    tgt = resolve_target("any", world.labels)
    observed, mask = _views(world, grid, [[], [0], [5, 6]])
    eig = torch.rand(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    from boed.policies import Truth

    def batch(seed):
        return BatchState(
            step=1, observed=observed, mask=mask, candidates=grid, scanned=[[], [0], [5, 6]],
            generators=[torch.Generator().manual_seed(seed + b) for b in range(3)], eig=eig,
            truth=[Truth(world.images[b : b + 1], world.state_labels[b].float()) for b in range(3)],
            classifier=clf, target=tgt,
        )  # fmt: skip

    for name in POLICIES:
        if name == "amortized":  # needs a network for this grid: tests/boed/test_amortized.py
            continue
        policy = get_policy(name)
        together = choose_batch(policy, batch(1)).tolist()
        state = batch(1)
        alone = [policy.choose(state.episode(b)) for b in range(3)]
        assert together == alone, name
    assert choose_batch(get_policy("boed"), batch(1)).tolist()[1] != 0  # seen: skipped


POLICY_NAMES = ("boed", "random", "raster", "oracle", "oracle-entropy")


@pytest.mark.parametrize("scans_per_step", [1, 2])
def test_episodes_of_a_batch_are_the_sessions_of_batch_one(world, grid, scans_per_step):
    clf, sampler = BayesClassifier(world), PosteriorSampler(world)
    images, labels = world.images[:4], world.state_labels[:4].float()
    for name in POLICY_NAMES:
        policy = get_policy(name)
        single = [
            [(r.step, r.candidate, r.eig, r.probs, r.eig_map) for r in run_session(
                images[b : b + 1], labels=labels[b], classifier=clf, policy=policy, candidates=grid, scans=3,
                sampler=sampler, n_samples=4, generator=torch.Generator().manual_seed(b),
                scans_per_step=scans_per_step,
            ).steps]
            for b in range(4)
        ]  # fmt: skip
        env = ScanEnv(clf, grid, num_envs=4, sampler=sampler, n_samples=4, scans=3)
        results = run_episodes(env, policy, 3, scans_per_step=scans_per_step, reset_options={
            "images": images, "labels": labels, "seeds": [0, 1, 2, 3]})  # fmt: skip
        batched = [[(r.step, r.candidate, r.eig, r.probs, r.eig_map) for r in res.steps] for res in results]
        assert batched == single, name
        assert all(len(steps) == 4 for steps in batched)


def test_stopping_rule_ends_episodes_of_a_batch_separately(world, grid):
    clf = BayesClassifier(world)
    env = ScanEnv(clf, grid, num_envs=6, scans=6)
    results = run_episodes(env, get_policy("raster"), 6, stopping=StoppingRule(entropy_below=0.1),
                           reset_options={"images": world.images[:6]})  # fmt: skip
    for b, result in enumerate(results):
        alone = run_session(world.images[b], classifier=clf, policy=get_policy("raster"), candidates=grid,
                            scans=6, stopping=StoppingRule(entropy_below=0.1))  # fmt: skip
        assert result.scans_used == alone.scans_used and result.stopped_early == alone.stopped_early
    assert len({r.scans_used for r in results}) > 1  # the case stops episodes at different steps


# ---------------------------------------------------------------- the simulation at B > 1
def _config(**kw):
    base = dict(images="toy", n_images=5, scans=3, n_samples=4, grid=4, image_size=16, patch_size=4,
                policies=("boed", "random", "oracle", "oracle-entropy"), figure_sessions=2,
                figure_completions=2)  # fmt: skip
    return SimulationConfig(**(base | kw))


def _by_session(store):
    out = {}
    for r in store.steps:
        s = store.sessions[r["session_id"]]
        values = (r["step"], r["candidate"], r["eig"], r["probs"], r["eig_map"])
        out.setdefault((s["image_id"], s["policy"]), []).append(values)
    arrays = {(store.sessions[sid]["image_id"], step, name): a.tolist()
              for (sid, step, name), a in store.arrays.items()}  # fmt: skip
    return out, arrays, {(s["image_id"], s["policy"]): s["status"] for s in store.sessions.values()}


def test_simulation_with_batched_episodes_gives_the_results_of_batch_one(world):
    runs = {}
    for b in (1, 3):
        store = FakeStore()
        run_simulation(store, ToyDataset(world, n=5), PosteriorSampler(world), BayesClassifier(world),
                       _config(batch_episodes=b))  # fmt: skip
        runs[b] = _by_session(store)
    assert runs[3] == runs[1]
    assert len(runs[1][0]) == 5 * 5 and set(runs[1][2].values()) == {"done"}
    assert any(key[2] == "completions" for key in runs[1][1])


def test_a_bad_image_in_a_batch_fails_only_its_own_session(world):
    """Image 2 has unknown labels: its oracle session fails (at B = 1 and inside a batch of 4,
    which is then run one session at a time); every other session is the same as at B = 1."""

    class Unlabelled(ToyDataset):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return item | {"lab": torch.full_like(item["lab"], math.nan)} if i == 2 else item

    ds = Unlabelled(world, n=4)
    outcomes = {}
    for b in (1, 4):
        store = FakeStore()
        config = _config(n_images=4, batch_episodes=b)
        run_simulation(store, ds, PosteriorSampler(world), BayesClassifier(world), config)
        outcomes[b] = _by_session(store)
        errors = {(s["image_id"], s["policy"]): s["error"] for s in store.sessions.values()}
        failed = {k for k, v in outcomes[b][2].items() if v == "failed"}
        assert failed == {(ds.ids[2], "oracle")}
        assert "oracle policy needs the true Any label" in errors[(ds.ids[2], "oracle")]
    assert outcomes[4] == outcomes[1]


def test_nan_sampler_in_a_batch_fails_the_boed_sessions_like_batch_one(world):
    store = FakeStore()
    run_simulation(store, ToyDataset(world, n=3), NaNSampler(world), BayesClassifier(world),
                   _config(n_images=3, batch_episodes=3))  # fmt: skip
    status = {(s["image_index"], s["policy"]): s for s in store.sessions.values()}
    assert all(status[(i, "boed")]["status"] == "failed" for i in range(3))
    assert status[(0, "boed")]["error"].startswith("BoedError: step 1: the sampler returned non-finite")
    assert all(status[(i, "random")]["status"] == "done" for i in range(3))


def test_simulation_config_checks_the_new_options():
    with pytest.raises(BoedError, match="batch-episodes must be at least 1"):
        _config(batch_episodes=0)
    with pytest.raises(BoedError, match="scans-per-step 17 is more than the 16 candidate"):
        _config(scans_per_step=17)


# ---------------------------------------------------------------- k scans per step
def _exact_joint(world, observed, mask, grid, picks, target):
    union = torch.zeros_like(mask[0])
    for c in picks:
        union = torch.maximum(union, grid.masks[c])
    return float(exact_mutual_information(world, observed, mask, [union], list(target.indices))[0])


def test_greedy_conditional_pair_never_carries_less_than_the_two_best_independent_scans():
    """Exact world (every consistent state with its posterior weight, a Bayes classifier): the
    controller's EIG of a set is its exact joint mutual information, so the comparison is exact."""
    strictly_better, cases = 0, 0
    for seed in range(4):
        world = ToyWorld(size=16, patch=4, seed=seed, findings=("Effusion", "Nodule", "Mass"), n_nuisance=2)
        grid = CandidateGrid.from_grid(16, 4, grid=4)
        for target_name, scanned in (("any", []), ("all", []), ("any", [5])):
            observed, mask = _views(world, grid, [scanned])
            controller = Controller(PosteriorSampler(world, exact=True), BayesClassifier(world), grid,
                                    target_name, scans_per_step=2)  # fmt: skip
            proposal = controller.propose(observed, mask)
            greedy = list(proposal.candidates_chosen)
            eig = proposal.eig.clone()
            eig[torch.tensor(scanned, dtype=torch.long)] = -math.inf
            independent = torch.argsort(eig, descending=True, stable=True)[:2].tolist()
            target = controller.target
            g = _exact_joint(world, observed, mask, grid, greedy, target)
            i = _exact_joint(world, observed, mask, grid, independent, target)
            assert proposal.joint_eig[1] == pytest.approx(g, abs=1e-5)  # the estimate is exact here
            first = _exact_joint(world, observed, mask, grid, greedy[:1], target)
            assert proposal.joint_eig[0] == pytest.approx(first, abs=1e-5)
            assert g >= i - 1e-6, (seed, target_name, greedy, independent)
            strictly_better += g > i + 1e-4
            cases += 1
    assert cases == 12 and strictly_better >= 4  # greedy-conditional is not the independent top-2


def test_k_scans_per_step_in_a_session(world, grid):
    calls = {"n": 0}

    class Counting(PosteriorSampler):
        def sample(self, *args, **kwargs):
            calls["n"] += 1
            return super().sample(*args, **kwargs)

    result = run_session(world.images[1], classifier=BayesClassifier(world), policy=get_policy("boed"),
                         candidates=grid, scans=5, sampler=Counting(world), n_samples=4, scans_per_step=2,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    steps = result.steps
    assert [s.step for s in steps] == [0, 1, 2, 3, 4, 5] and calls["n"] == 3  # decisions at scans 1, 3, 5
    assert len({s.candidate for s in steps[1:]}) == 5
    assert steps[2].eig >= steps[1].eig - 1e-9  # the pair's joint EIG is at least the first's
    assert steps[2].eig_map != steps[1].eig_map  # the second is chosen from the conditional map


def test_greedy_scans_skips_what_earlier_choices_cover(world, grid):
    mask = torch.zeros(1, 1, 16, 16)

    def raster(mask_j, eig_j):
        return choose_batch(get_policy("raster"), BatchState(1, mask_j, mask_j, grid, [[]], [None]))

    chosen, maps = greedy_scans(raster, mask, grid, 3, None, None)
    assert chosen.tolist() == [[0, 1, 2]] and maps == [None, None, None]


def test_shared_prior_decision_in_the_environment(world, grid):
    clf, sampler = BayesClassifier(world), PosteriorSampler(world)
    prior = prior_decision(sampler, clf, grid, 4, generator=torch.Generator().manual_seed(3))
    env = ScanEnv(clf, grid, num_envs=2, sampler=sampler, n_samples=4, prior=prior)
    env.reset(options={"images": world.images[:2], "seeds": [0, 1]})
    decisions = env.decide()
    assert all(d.shared and torch.equal(d.eig, prior.eig) for d in decisions)
    assert torch.equal(decisions[0].stderr, eig_standard_error(prior.ig))
