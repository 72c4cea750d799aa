"""Policies, the stopping rule, the session loop and the simulation (toy world, fake store)."""

import math
import re

import pytest
import torch

from boed.errors import BoedError
from boed.policies import (
    FULL_IMAGE,
    POLICIES,
    DecisionState,
    StoppingRule,
    Truth,
    get_policy,
    parse_policies,
)
from boed.scanner import CandidateGrid, Scanner
from boed.session import run_session
from boed.simulate import SimulationConfig, run_simulation, session_seed
from tests.boed.toys import BayesClassifier, FakeStore, PosteriorSampler, ToyDataset, ToyWorld


@pytest.fixture
def world():
    return ToyWorld(seed=4)


@pytest.fixture
def grid(world):
    return CandidateGrid.from_grid(world.size, world.patch, grid=3)


def _state(world, grid, scanned=(), **kw):
    scanner = Scanner(world.images[0:1], grid)
    for c in scanned:
        scanner.scan(c)
    return DecisionState(
        step=len(scanned) + 1,
        observed=scanner.observed,
        mask=scanner.mask,
        candidates=grid,
        scanned=list(scanned),
        **kw,
    )


def test_scanner_reveals_patches(world, grid):
    scanner = Scanner(world.images[0:1], grid)
    scanner.scan(0)
    assert scanner.mask.sum() == world.patch**2
    assert torch.equal(scanner.observed[..., :4, :4], world.images[0:1, ..., :4, :4])
    assert grid.location(8) == (4, 4)
    with pytest.raises(BoedError, match="out of range"):
        scanner.scan(9)


def test_boed_policy_takes_argmax_and_skips_seen(world, grid):
    eig = torch.zeros(9, dtype=torch.float64)
    eig[5] = 0.3
    assert get_policy("boed").choose(_state(world, grid, eig=eig)) == 5
    eig = torch.full((9,), -0.1, dtype=torch.float64)
    eig[0] = 0.0  # already seen: exactly zero, but must not be picked over revealing candidates
    assert get_policy("boed").choose(_state(world, grid, scanned=[0], eig=eig)) == 1
    with pytest.raises(BoedError):
        get_policy("boed").choose(_state(world, grid))


def test_random_policy_is_seeded_and_reveals_something(world, grid):
    picks = [
        get_policy("random").choose(_state(world, grid, [0, 8], generator=torch.Generator().manual_seed(s)))
        for s in range(30)
    ]
    assert 0 not in picks and 8 not in picks and len(set(picks)) > 3
    again = [
        get_policy("random").choose(_state(world, grid, [0, 8], generator=torch.Generator().manual_seed(s)))
        for s in range(30)
    ]
    assert picks == again


def test_raster_policy_tiles(world, grid):
    assert get_policy("raster").choose(_state(world, grid)) == 0
    assert get_policy("raster").choose(_state(world, grid, [0])) == 2  # (0, 4): no overlap with (0, 0)
    assert get_policy("raster").choose(_state(world, grid, [4])) == 0  # none untouched: most new pixels
    assert get_policy("raster").choose(_state(world, grid, [4, 0])) == 2


def test_entropy_oracle_minimises_entropy_on_true_image(world, grid):
    from boed.eig import resolve_target, target_entropy

    clf = BayesClassifier(world)
    tgt = resolve_target("any", world.labels)
    state = _state(world, grid, classifier=clf, target=tgt, truth=Truth(world.images[0:1]))
    choice = get_policy("oracle-entropy").choose(state)
    ent = [float(target_entropy(clf.predict(world.images[0:1] * m, m), tgt)[0]) for m in grid.masks[:, None]]
    assert ent[choice] == pytest.approx(min(ent))


def test_policy_names():
    names = {"boed", "boed-lcb", "random", "random-disjoint", "raster", "oracle", "oracle-entropy"}
    assert names <= set(POLICIES)
    assert parse_policies("boed, random,boed") == ("boed", "random")
    valid = "valid policies: boed, random, raster, oracle, oracle-entropy, random-disjoint, boed-lcb"
    with pytest.raises(BoedError, match=valid):
        parse_policies("boed,greedy")


def test_session_loop_logs_every_step(world, grid):
    clf, records, arrays = BayesClassifier(world), [], {}
    result = run_session(
        world.images[3],
        classifier=clf,
        policy=get_policy("boed"),
        candidates=grid,
        scans=3,
        sampler=PosteriorSampler(world),
        n_samples=6,
        generator=torch.Generator().manual_seed(0),
        on_step=records.append,
        on_array=lambda s, n, a: arrays.__setitem__((s, n), a),
        figure_completions=2,
    )
    assert [r.step for r in records] == [0, 1, 2, 3] and result.scans_used == 3
    assert records[0].location is None and records[0].eig is None
    assert all(len(r.probs) == 15 for r in records)
    assert len({r.candidate for r in records[1:]}) == 3
    assert records[1].eig == pytest.approx(max(max(row) for row in records[1].eig_map))
    assert arrays[(1, "completions")].shape == (2, 8, 8) and arrays[(1, "ig")].shape == (2, 3, 3)
    assert arrays[(2, "eig")].shape == (3, 3)


def test_session_is_reproducible(world, grid):
    def run():
        return run_session(
            world.images[2],
            classifier=BayesClassifier(world),
            policy=get_policy("boed"),
            candidates=grid,
            scans=2,
            sampler=PosteriorSampler(world),
            n_samples=3,
            generator=torch.Generator().manual_seed(7),
        ).steps

    assert [(s.candidate, s.probs) for s in run()] == [(s.candidate, s.probs) for s in run()]


def test_stopping_rule(world, grid):
    def entropy_rule(threshold):
        return run_session(
            world.images[0],
            classifier=BayesClassifier(world),
            policy=get_policy("raster"),
            candidates=grid,
            scans=4,
            stopping=StoppingRule(entropy_below=threshold),
        )

    assert entropy_rule(0.0).scans_used == 4 and not entropy_rule(0.0).stopped_early
    assert entropy_rule(0.7).stopped_early and entropy_rule(0.7).scans_used == 0  # H(Any) at step 0 = 0.56
    result = run_session(
        world.images[0],
        classifier=BayesClassifier(world),
        policy=get_policy("boed"),
        candidates=grid,
        scans=5,
        sampler=PosteriorSampler(world),
        n_samples=4,
        generator=torch.Generator().manual_seed(0),
        stopping=StoppingRule(eig_below=10.0),
    )
    assert result.stopped_early and result.scans_used == 0


def test_session_seed_differs_per_session():
    seeds = {session_seed(0, i, p) for i in range(5) for p in ("boed", "random")}
    assert len(seeds) == 10 and session_seed(0, 1, "boed") == session_seed(0, 1, "boed")


def _config(**kw):
    base = dict(
        images="toy",
        n_images=4,
        scans=2,
        n_samples=4,
        grid=3,
        image_size=8,
        patch_size=4,
        policies=("boed", "random", "oracle"),
        figure_sessions=1,
        figure_completions=2,
    )
    return SimulationConfig(**(base | kw))


def test_simulation_records_all_sessions_and_survives_a_failure(world):
    class Flaky(BayesClassifier):
        def predict(self, observed, mask):
            if observed.shape[0] == 1 and torch.equal(observed, world.images[int(self.bad)][None] * mask):
                if mask.sum() == mask.numel():
                    raise RuntimeError("boom")
            return super().predict(observed, mask)

    ds = ToyDataset(world, n=4)
    clf = Flaky(world)
    clf.bad = int(ds.states[1])
    store = FakeStore()
    run_id = run_simulation(store, ds, PosteriorSampler(world), clf, _config())
    sessions = list(store.sessions.values())
    assert len(sessions) == 4 * 4
    failed = [s for s in sessions if s["status"] == "failed"]
    assert failed and all("boom" in s["error"] for s in failed)
    assert {s["policy"] for s in sessions} == {FULL_IMAGE, "boed", "random", "oracle"}
    assert store.runs[run_id]["status"] == "done"
    assert any(k[2] == "eig" for k in store.arrays)


def test_resume_adds_only_missing_sessions(world):
    ds = ToyDataset(world, n=3)
    store = FakeStore()

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def progress(p):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_simulation(
            store, ds, PosteriorSampler(world), BayesClassifier(world), _config(n_images=3), progress=progress
        )
    run_id = next(iter(store.runs))
    assert store.runs[run_id]["status"] == "interrupted"
    run_simulation(
        store, ds, PosteriorSampler(world), BayesClassifier(world), _config(n_images=3), run_id=run_id
    )
    keys = [(s["image_id"], s["policy"]) for s in store.sessions.values()]
    assert len(keys) == len(set(keys)) == 3 * 4


def test_simulation_refuses_parts_that_do_not_fit(world):
    ds = ToyDataset(world, n=2)
    with pytest.raises(BoedError, match="image sizes do not fit"):
        run_simulation(
            FakeStore(), ds, PosteriorSampler(world), BayesClassifier(world), _config(image_size=16)
        )
    clf = BayesClassifier(world)
    clf.labels = clf.labels[:-1]
    with pytest.raises(BoedError, match="labels"):
        run_simulation(FakeStore(), ds, PosteriorSampler(world), clf, _config())
    with pytest.raises(BoedError, match="valid targets"):
        run_simulation(FakeStore(), ds, PosteriorSampler(world), BayesClassifier(world), _config(target="x"))


def test_full_image_session_has_one_step(world):
    store = FakeStore()
    run_simulation(
        store,
        ToyDataset(world, n=1),
        PosteriorSampler(world),
        BayesClassifier(world),
        _config(n_images=1, policies=("random",)),
    )
    full = [sid for sid, s in store.sessions.items() if s["policy"] == FULL_IMAGE]
    steps = [r for r in store.steps if r["session_id"] == full[0]]
    assert len(steps) == 1 and steps[0]["step"] == 0 and not math.isnan(steps[0]["probs"][14])


def test_first_decision_is_shared_and_reproducible(world):
    def first_maps(share):
        store = FakeStore()
        run_simulation(
            store,
            ToyDataset(world, n=3),
            PosteriorSampler(world),
            BayesClassifier(world),
            _config(n_images=3, policies=("boed",), share_prior_decision=share),
        )
        return [r["eig_map"] for r in store.steps if r["step"] == 1]

    shared = first_maps(True)
    assert len(shared) == 3 and shared[0] == shared[1] == shared[2]
    assert first_maps(True) == shared
    assert len({str(m) for m in first_maps(False)}) > 1  # per-session draws differ


def test_boed_beats_random_with_exact_models():
    """With an exact posterior sampler and a Bayes classifier, BOED must reduce the entropy faster;
    the entropy oracle bounds that criterion and the label oracle bounds the probability of the truth."""
    from boed.report.metrics import mean_binary_entropy

    world = ToyWorld(size=32, patch=8, seed=7, findings=("Effusion", "Nodule", "Mass"), n_nuisance=3)
    store = FakeStore()
    config = SimulationConfig(
        images="toy",
        n_images=16,
        scans=2,
        n_samples=10,
        grid=5,
        image_size=32,
        patch_size=8,
        policies=("boed", "random", "oracle-entropy", "oracle"),
        figure_sessions=0,
    )
    run_simulation(store, ToyDataset(world, n=16), PosteriorSampler(world), BayesClassifier(world), config)
    entropy, p_truth = {}, {}
    for policy in config.policies:
        sids = {sid for sid, s in store.sessions.items() if s["policy"] == policy}
        rows = [r for r in store.steps if r["session_id"] in sids and r["step"] == 2]
        probs = [r["probs"][14] for r in rows]
        truth = [store.sessions[r["session_id"]]["true_labels"][14] for r in rows]
        entropy[policy] = mean_binary_entropy(probs)
        p_truth[policy] = sum(p if t == 1 else 1 - p for p, t in zip(probs, truth, strict=True)) / len(rows)
    assert entropy["oracle-entropy"] <= entropy["boed"] + 1e-6 < entropy["random"]
    assert p_truth["oracle"] >= max(p_truth["boed"], p_truth["random"]) - 1e-6


def test_unreadable_image_fails_its_sessions_only(world):
    class Broken(ToyDataset):
        def __getitem__(self, i):
            if i == 1:
                raise OSError("truncated file")
            return super().__getitem__(i)

    store = FakeStore()
    ds = Broken(world, n=3)
    ds_ok = ToyDataset(world, n=3)

    run_simulation(store, ds, PosteriorSampler(world), BayesClassifier(world), _config(n_images=3))
    failed = [s for s in store.sessions.values() if s["status"] == "failed"]
    assert len(failed) == 4 and {s["image_id"] for s in failed} == {ds_ok.ids[1]}
    assert all("truncated file" in s["error"] for s in failed)
    assert sum(s["status"] == "done" for s in store.sessions.values()) == 8


def test_oracle_maximises_probability_of_the_truth(world, grid):
    from boed.eig import resolve_target

    clf = BayesClassifier(world)
    tgt = resolve_target("any", world.labels)
    truth = world.state_labels[0].float()
    state = _state(world, grid, classifier=clf, target=tgt, truth=Truth(world.images[0:1], truth))
    choice = get_policy("oracle").choose(state)
    p_true = []
    for m in grid.masks[:, None]:
        p = float(clf.predict(world.images[0:1] * m, m)[0, 14])
        p_true.append(p if truth[14] == 1 else 1 - p)
    assert p_true[choice] == pytest.approx(max(p_true))
    with pytest.raises(BoedError, match="labels"):
        get_policy("oracle").choose(
            _state(world, grid, classifier=clf, target=tgt, truth=Truth(world.images[0:1]))
        )


class _Spy:
    """Wraps a policy and keeps every DecisionState it is given."""

    def __init__(self, inner):
        self.inner, self.states = inner, []
        self.name, self.needs_eig = inner.name, inner.needs_eig
        self.needs_truth = inner.needs_truth

    def choose(self, state):
        self.states.append(state)
        return self.inner.choose(state)


def test_only_the_oracles_receive_the_truth(world, monkeypatch):
    import boed.simulate as sim

    spies = {}

    def spy_policy(name):
        return spies.setdefault(name, _Spy(get_policy(name)))

    monkeypatch.setattr(sim, "get_policy", spy_policy)
    ds = ToyDataset(world, n=2)
    store = FakeStore()
    run_simulation(
        store,
        ds,
        PosteriorSampler(world),
        BayesClassifier(world),
        # amortized needs a network trained for this grid: tests/boed/test_amortized.py runs it
        _config(n_images=2, policies=tuple(p for p in POLICIES if p != "amortized")),
    )
    assert all(s["status"] == "done" for s in store.sessions.values())
    for name, spy in spies.items():
        assert len(spy.states) == 2 * 2, name  # 2 images x 2 scans
        for state in spy.states:
            if name in ("oracle", "oracle-entropy"):
                assert state.truth is not None
                assert any(torch.equal(state.image[0], ds[i]["img"]) for i in range(2))
                assert state.labels.shape == (len(world.labels),)
            else:
                assert state.truth is None, name
                with pytest.raises(BoedError, match="hidden"):
                    _ = state.image
                with pytest.raises(BoedError, match="hidden"):
                    _ = state.labels
    assert {p.name for p in map(get_policy, POLICIES) if p.needs_truth} == {"oracle", "oracle-entropy"}


def test_oracle_with_unknown_labels_refuses(world, grid):
    from boed.eig import resolve_target

    clf = BayesClassifier(world)
    tgt = resolve_target("any", world.labels)
    unknown = torch.full((len(world.labels),), math.nan)
    with pytest.raises(BoedError, match="unknown"):
        get_policy("oracle").choose(
            _state(world, grid, classifier=clf, target=tgt, truth=Truth(world.images[0:1], unknown))
        )

    class Unlabelled(ToyDataset):
        def __getitem__(self, i):
            return super().__getitem__(i) | {"lab": torch.full((len(world.labels),), math.nan)}

    store = FakeStore()
    run_simulation(store, Unlabelled(world, n=2), PosteriorSampler(world), clf, _config(n_images=2))
    by_policy = {}
    for s in store.sessions.values():
        by_policy.setdefault(s["policy"], []).append(s)
    assert all(s["status"] == "failed" and "oracle policy needs the true Any label" in s["error"]
               for s in by_policy["oracle"])  # fmt: skip
    assert all(s["status"] == "done" for p in ("boed", "random", FULL_IMAGE) for s in by_policy[p])


def test_nan_classifier_fails_the_session_naming_the_step(world, grid):
    from tests.boed.toys import NaNClassifier

    image = world.images[1:2]
    # NaN once more than one patch is seen: steps 0 and 1 are fine, step 2's views are not
    clf = NaNClassifier(world, from_pixels=world.patch**2 + 1)
    logged = []
    with pytest.raises(
        BoedError, match=r"step 2: the classifier returned non-finite probabilities: \d+ of 15 values are NaN"
    ):
        run_session(
            image,
            classifier=clf,
            policy=get_policy("raster"),
            candidates=grid,
            scans=3,
            on_step=logged.append,
        )
    assert [r.step for r in logged] == [0, 1] and all(math.isfinite(p) for r in logged for p in r.probs)
    # the EIG of step 2 asks about views with more than one patch: it fails there, before any choice
    with pytest.raises(BoedError, match="step 2: the classifier returned non-finite"):
        run_session(image, classifier=clf, policy=get_policy("boed"), candidates=grid, scans=3,
                    sampler=PosteriorSampler(world), n_samples=4)  # fmt: skip
    with pytest.raises(BoedError, match="step 0: the classifier returned non-finite"):
        run_session(
            image, classifier=NaNClassifier(world), policy=get_policy("random"), candidates=grid, scans=1
        )


def test_nan_sampler_and_nan_image_fail_the_session(world, grid):
    from tests.boed.toys import NaNSampler

    image = world.images[1:2]
    with pytest.raises(BoedError, match="step 1: the sampler returned non-finite completions"):
        run_session(image, classifier=BayesClassifier(world), policy=get_policy("boed"), candidates=grid,
                    scans=2, sampler=NaNSampler(world), n_samples=4)  # fmt: skip
    bad = image.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(BoedError, match="image has non-finite pixels"):
        run_session(
            bad, classifier=BayesClassifier(world), policy=get_policy("random"), candidates=grid, scans=1
        )


def test_non_finite_models_fail_sessions_in_a_run_and_are_counted(world):
    from tests.boed.toys import NaNClassifier, NaNSampler

    # a checkpoint with a NaN weight: every session fails, none is recorded as done, none has steps
    store = FakeStore()
    run_id = run_simulation(
        store, ToyDataset(world, n=2), PosteriorSampler(world), NaNClassifier(world), _config(n_images=2)
    )
    sessions = list(store.sessions.values())
    assert len(sessions) == 2 * 4 and all(s["status"] == "failed" for s in sessions)
    assert all("non-finite probabilities" in s["error"] for s in sessions)
    assert int(store.runs[run_id]["timings"]["failed_sessions"]) == 8
    # a sampler returning NaN: the boed sessions fail, the others are unaffected
    store = FakeStore()
    run_id = run_simulation(
        store, ToyDataset(world, n=2), NaNSampler(world), BayesClassifier(world), _config(n_images=2)
    )
    status = {(s["image_index"], s["policy"]): s for s in store.sessions.values()}
    assert all(status[(i, "boed")]["status"] == "failed" for i in range(2))
    assert status[(0, "boed")]["error"].startswith(
        "BoedError: step 1: the sampler returned non-finite completions"
    )
    assert all(status[(i, p)]["status"] == "done" for i in range(2) for p in ("random", "oracle", FULL_IMAGE))
    assert int(store.runs[run_id]["timings"]["failed_sessions"]) == 2
    assert not any(r["eig"] is not None and not math.isfinite(r["eig"]) for r in store.steps)


def test_shipped_phantom_checkpoints_warn_on_other_sources():
    """The shipped checkpoints record their phantom training data; other sources give a warning."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from boed.simulate import check_provenance

    root = Path(__file__).parents[2]
    parts = {
        "classifier": SimpleNamespace(
            meta=json.loads((root / "classifiers/weights/phantom-cpu.json").read_text())
        ),
        "sampler": SimpleNamespace(
            meta=json.loads((root / "generative/weights/aipo-phantom-cpu.json").read_text())
        ),
    }
    folder = {"source": "folder", "fingerprint": "f" * 64, "split": "test", "split_seed": 0}
    warnings = check_provenance(parts, folder, allow_training_images=False)
    assert len(warnings) == 2
    assert all(re.search(r"trained on phantoms images .*but the data are folder images", w) for w in warnings)
    assert warnings[0].startswith("the classifier checkpoint") and warnings[1].startswith(
        "the sampler checkpoint"
    )
    assert check_provenance(parts, {"source": "phantoms", "split": "test"}, allow_training_images=False) == []
    assert (
        check_provenance({"classifier": SimpleNamespace(meta={})}, folder, allow_training_images=False) == []
    )
