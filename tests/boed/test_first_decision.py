"""The first decision on many completions, the noise-averse BOED policy and the non-overlapping
random baseline (boed.session.prior_decision, boed.policies)."""

import math

import pytest
import torch

from boed.eig import eig_standard_error
from boed.policies import BatchState, BoedLCBPolicy, DecisionState, get_policy, lower_confidence_bound
from boed.scanner import CandidateGrid
from boed.session import prior_decision
from boed.simulate import SimulationConfig, decision_memory, run_simulation
from tests.boed.toys import BayesClassifier, FakeStore, PosteriorSampler, ToyDataset, ToyWorld


class CountingSampler(PosteriorSampler):
    """Exact posterior draws; records the N of every call."""

    def __init__(self, world):
        super().__init__(world)
        self.calls = []

    def sample(self, observed, mask, n, generator=None):
        self.calls.append((int(n), bool(mask.any())))
        return super().sample(observed, mask, n, generator)


def _batch(eig, eig_se=None, size=8, grid=None):
    b = eig.shape[0]
    zero = torch.zeros(b, 1, size, size)
    return BatchState(1, zero, zero, grid, [[] for _ in range(b)], [None] * b, eig=eig, eig_se=eig_se)


def test_lcb_policy_maximises_eig_minus_z_se_and_falls_back_to_the_argmax():
    grid = CandidateGrid.from_grid(8, 4, 3)
    eig = torch.zeros(1, 9, dtype=torch.float64)
    eig[0, 2], eig[0, 5] = 0.30, 0.25
    se = torch.full_like(eig, 0.01)
    se[0, 2] = 0.10  # the best estimate rests on noisy completions
    assert int(get_policy("boed").choose_batch(_batch(eig, se, grid=grid))[0]) == 2
    assert int(get_policy("boed-lcb").choose_batch(_batch(eig, se, grid=grid))[0]) == 5
    # no standard error (N = 1: NaN, or none given): the argmax
    assert int(BoedLCBPolicy().choose_batch(_batch(eig, None, grid=grid))[0]) == 2
    nan = torch.full_like(eig, math.nan)
    assert int(BoedLCBPolicy().choose_batch(_batch(eig, nan, grid=grid))[0]) == 2
    torch.testing.assert_close(lower_confidence_bound(eig, se, 2.0), eig - 2 * se)
    # one episode through choose(): the standard errors travel with the state
    state = DecisionState(1, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), grid, eig=eig[0], eig_se=se[0])
    assert BoedLCBPolicy().choose(state) == 5


def test_random_disjoint_never_overlaps_while_a_disjoint_scan_is_left():
    grid = CandidateGrid.from_grid(32, 8, 25)  # every position: overlaps are easy to make
    gen = torch.Generator().manual_seed(0)
    policy = get_policy("random-disjoint")
    for _ in range(5):
        mask = torch.zeros(1, 1, 32, 32)
        for _step in range(6):
            c = policy.choose(DecisionState(1, mask, mask, grid, generator=gen))
            assert float((grid.masks[c] * mask[0]).sum()) == 0.0  # nothing seen twice
            mask = torch.maximum(mask, grid.masks[c : c + 1])
        assert float(mask.sum()) == 6 * 64
    # once nothing disjoint is left: one of the candidates revealing the most
    full = torch.ones(1, 1, 32, 32)
    full[0, 0, 0, 0] = 0
    c = policy.choose(DecisionState(1, full, full, grid, generator=gen))
    assert grid.masks[c, 0, 0, 0] == 1


def test_prior_decision_in_chunks_draws_every_completion_and_keeps_the_weights():
    world = ToyWorld(seed=3)
    grid = CandidateGrid.from_grid(world.size, world.patch, 3)
    sampler = CountingSampler(world)
    gen = torch.Generator().manual_seed(0)
    prior = prior_decision(sampler, BayesClassifier(world), grid, 25, generator=gen, chunk=10)
    assert [n for n, _ in sampler.calls] == [10, 10, 5]
    assert prior.completions.images.shape[0] == 25 and prior.ig.shape == (25, len(grid))
    torch.testing.assert_close(prior.eig, prior.ig.mean(0))
    # one call without chunks; an exact sampler's weights are concatenated, not dropped
    exact = PosteriorSampler(world, exact=True)
    whole = prior_decision(exact, BayesClassifier(world), grid, 4)
    parts = prior_decision(exact, BayesClassifier(world), grid, 8, chunk=4)
    assert parts.completions.log_weights.shape == (2 * whole.completions.log_weights.shape[0], 1)
    torch.testing.assert_close(parts.eig, whole.eig)  # two copies of the exact posterior: same EIG


def test_more_first_completions_shrink_the_standard_error():
    world = ToyWorld(seed=1)
    grid = CandidateGrid.from_grid(world.size, world.patch, 3)
    ses = []
    for n in (10, 250):
        prior = prior_decision(
            PosteriorSampler(world),
            BayesClassifier(world),
            grid,
            n,
            generator=torch.Generator().manual_seed(2),
        )
        ses.append(float(eig_standard_error(prior.ig).max()))
    assert ses[1] < ses[0] / 2  # 1/sqrt(N): about 5x smaller


def test_a_run_computes_the_first_decision_once_with_first_completions():
    world = ToyWorld(seed=4)
    sampler = CountingSampler(world)
    config = SimulationConfig(
        n_images=3,
        scans=2,
        n_samples=4,
        grid=3,
        image_size=8,
        patch_size=4,
        policies=("boed",),
        first_completions=30,
    )
    store = FakeStore()
    run_simulation(store, ToyDataset(world, n=3), sampler, BayesClassifier(world), config)
    prior_calls = [n for n, seen in sampler.calls if not seen]
    assert sum(prior_calls) == 30 and max(prior_calls) == 4  # once per run, in chunks of n_samples
    assert [n for n, seen in sampler.calls if seen] == [4, 4, 4]  # step 2 of each session
    step1 = [s for s in store.steps if s["step"] == 1]
    assert len(step1) == 3 and len({s["candidate"] for s in step1}) == 1  # one shared decision
    assert all(s["diagnostics"]["eig_se"] > 0 for s in step1)
    assert SimulationConfig(first_completions=None, n_samples=7).prior_completions == 7
    with pytest.raises(Exception, match="first-completions must be at least 1"):
        SimulationConfig(first_completions=0)
    # the memory estimate counts the first decision's completions
    small = SimulationConfig(first_completions=None)
    assert decision_memory(SimulationConfig(first_completions=5000)) > decision_memory(small)
