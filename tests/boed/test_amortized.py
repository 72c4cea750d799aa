"""The amortised policy: map dataset (exact maps, resumable), loss, network, training, policy.

Tiny: the toy world of tests/boed/toys.py (8 px images, 4 px scans, 5 x 5 candidates), whose
exact sampler makes the EIG maps deterministic, and an 8-channel network.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from boed.amortized.dataset import MapConfig, generate_maps, load_maps
from boed.amortized.model import EIGMapNet, EIGNetConfig
from boed.amortized.policy import AmortizedPolicy, checkpoint_warnings, load_network
from boed.amortized.train import AmortizedTrainConfig, decision_metrics, map_loss, train_amortized
from boed.eig import expected_information_gain
from boed.errors import BoedError
from boed.policies import StoppingRule, get_policy
from boed.scanner import CandidateGrid
from boed.session import run_session
from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyDataset, ToyWorld

GRID = 5


class TrainSplit(ToyDataset):
    def describe(self):
        return {"images": "toy", "n": len(self), "split": "train"}


@pytest.fixture(scope="module")
def world():
    return ToyWorld(size=8, patch=4)


@pytest.fixture(scope="module")
def parts(world):
    clf, smp = BayesClassifier(world), PosteriorSampler(world, exact=True)
    clf.sha256, smp.sha256 = "c" * 64, "s" * 64
    return clf, smp


def config(**kw):
    base = dict(
        images="toy",
        n_images=10,
        scans=3,
        n_samples=4,
        prior_samples=4,
        grid=GRID,
        image_size=8,
        patch_size=4,
        chunk=2,
        epsilon=0.5,
        preset="tiny",
    )
    return MapConfig(**(base | kw))


@pytest.fixture(scope="module")
def maps_dir(tmp_path_factory, world, parts):
    out = tmp_path_factory.mktemp("maps")
    clf, smp = parts
    generate_maps(out, config(), sampler=smp, classifier=clf, dataset=TrainSplit(world, n=10))
    return out


def test_maps_are_the_exact_controllers_on_the_observed_images(maps_dir, world, parts):
    clf, smp = parts
    maps = load_maps(maps_dir)
    t = maps.tensors
    assert len(maps) == 10 * 3 and t["eig"].shape == (30, GRID * GRID)
    ds = TrainSplit(world, n=10)
    cand = CandidateGrid.from_grid(8, 4, GRID)
    for r in range(len(maps)):
        image = ds[int(t["image"][r])]["img"][None]
        mask = t["mask"][r : r + 1].float()
        assert int(mask.sum()) > 0 or int(t["step"][r]) == 1  # step 1: nothing seen
        torch.testing.assert_close(t["observed"][r : r + 1], image * mask)  # x * m of the right image
        comps = smp.sample(image * mask, mask, 4)
        eig, _ = expected_information_gain(clf, image * mask, mask, comps, cand, "any")
        torch.testing.assert_close(t["eig"][r].double(), eig.double(), atol=1e-5, rtol=1e-4)
    # masks grow by the chosen patch from one step to the next of a session
    for r in range(len(maps) - 1):
        if int(t["image"][r]) == int(t["image"][r + 1]):
            nxt = torch.maximum(t["mask"][r].float(), cand.masks[int(t["chosen"][r])])
            torch.testing.assert_close(t["mask"][r + 1].float(), nxt)
    assert 0 < int(t["random"].sum()) < len(maps)  # epsilon 0.5: both kinds of scan


def test_generation_resumes_chunk_by_chunk_to_the_same_maps(tmp_path, maps_dir, world, parts):
    clf, smp = parts
    ds = TrainSplit(world, n=10)
    first = generate_maps(tmp_path, config(), sampler=smp, classifier=clf, dataset=ds, max_chunks=2)
    assert first["chunks"] == 2
    again = generate_maps(tmp_path, config(), sampler=smp, classifier=clf, dataset=ds)
    assert again["skipped_chunks"] == 2 and again["chunks"] == 3
    a, b = load_maps(tmp_path).tensors, load_maps(maps_dir).tensors
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_other_settings_or_checkpoints_in_the_same_folder_are_refused(maps_dir, world, parts):
    clf, smp = parts
    ds = TrainSplit(world, n=10)
    with pytest.raises(BoedError, match="other settings"):
        generate_maps(maps_dir, config(epsilon=0.1), sampler=smp, classifier=clf, dataset=ds)
    other = BayesClassifier(world)
    other.sha256 = "d" * 64
    with pytest.raises(BoedError, match="classifier or sampler checkpoints"):
        generate_maps(maps_dir, config(), sampler=smp, classifier=other, dataset=ds)


def test_map_datasets_of_other_seeds_join_and_others_are_refused(tmp_path, maps_dir, world, parts):
    from boed.amortized.dataset import join_maps, load_maps

    clf, smp = parts
    second = tmp_path / "seed1"
    generate_maps(second, config(seed=1), sampler=smp, classifier=clf, dataset=TrainSplit(world, n=10))
    a, b = load_maps(maps_dir), load_maps(second)
    joined = join_maps([a, b], [maps_dir, second])
    assert len(joined) == len(a) + len(b)
    images = joined.tensors["image"]
    assert set(images[: len(a)].tolist()).isdisjoint(images[len(a) :].tolist())  # one session, one image
    assert torch.equal(joined.tensors["eig"][len(a) :], b.tensors["eig"])
    train_rows, val_rows = joined.split(10)
    assert len(val_rows) > len(a.split(10)[1])  # the second dataset adds validation sessions
    assert [j["folder"] for j in joined.manifest["joined"]] == [str(maps_dir), str(second)]
    other_clf = BayesClassifier(world)
    other_clf.sha256 = "d" * 64
    third = tmp_path / "other"
    generate_maps(third, config(), sampler=smp, classifier=other_clf, dataset=TrainSplit(world, n=10))
    with pytest.raises(BoedError, match="other classifier or sampler checkpoints"):
        join_maps([a, load_maps(third)], [maps_dir, third])
    fourth = tmp_path / "n8"
    generate_maps(fourth, config(n_samples=8), sampler=smp, classifier=clf, dataset=TrainSplit(world, n=10))
    with pytest.raises(BoedError, match="n_samples 8 differs from 4"):
        join_maps([a, load_maps(fourth)], [maps_dir, fourth])


def test_held_out_images_are_refused(tmp_path, world, parts):
    clf, smp = parts

    class TestSplit(ToyDataset):
        def describe(self):
            return {"split": "test"}

    with pytest.raises(BoedError, match="training images only"):
        generate_maps(tmp_path, config(), sampler=smp, classifier=clf, dataset=TestSplit(world, n=10))
    with pytest.raises(BoedError, match="epsilon"):
        config(epsilon=1.5)


def test_a_corrupt_chunk_is_named(tmp_path, maps_dir):
    import shutil

    shutil.copytree(maps_dir, tmp_path / "m")
    (tmp_path / "m" / "chunk-00001.safetensors").write_bytes(b"garbage")
    with pytest.raises(BoedError, match="chunk-00001"):
        load_maps(tmp_path / "m")


def test_loss_ranks_the_best_candidates_and_ignores_the_others():
    eig = torch.tensor([[0.1, 0.5, 0.2, 0.0]])
    se = torch.full_like(eig, 0.05)
    reveals = torch.tensor([[True, True, True, False]])
    right = map_loss(eig.clone(), eig, se, reveals, 1.0, 1.0)
    swapped = map_loss(eig[:, [1, 0, 2, 3]], eig, se, reveals, 1.0, 1.0)
    assert float(right["mse"]) == 0.0 and float(swapped["rank"]) > float(right["rank"])
    junk = eig.clone()
    junk[0, 3] = 9.0  # a candidate revealing nothing: no part of the loss
    assert float(map_loss(junk, eig, se, reveals, 1.0, 1.0)["loss"]) == pytest.approx(float(right["loss"]))
    # MSE over the revealing candidates, in units of the scale
    off = map_loss(eig + 0.2, eig, se, reveals, 0.1, 0.0)
    assert float(off["mse"]) == pytest.approx(4.0, rel=1e-5)


def test_decision_metrics_by_hand():
    eig = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.0, 0.1]])
    pred = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # wrong, right
    se = torch.full_like(eig, 0.01)
    m = decision_metrics(pred, eig, se, torch.ones_like(eig, dtype=torch.bool))
    assert m["top1"] == 0.5 and m["regret"] == pytest.approx(0.15)
    random_regret = (0.5 - 0.8 / 3) + (0.3 - 0.4 / 3)
    assert m["regret_vs_random"] == pytest.approx(0.3 / random_regret)
    assert m["within_2se"] == 0.5


def test_network_shapes_and_patch_pooling():
    net = EIGMapNet(EIGNetConfig(image_size=8, patch_size=4, grid=GRID, width=8, target_scale=2.0))
    x, m = torch.rand(3, 1, 8, 8), torch.ones(3, 1, 8, 8)
    out = net(x, m)
    assert out.shape == (3, GRID * GRID)
    torch.testing.assert_close(net.pool.sum(1), torch.ones(GRID * GRID))
    scaled = EIGMapNet(EIGNetConfig(image_size=8, patch_size=4, grid=GRID, width=8, target_scale=1.0))
    scaled.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(x, m), 2.0 * scaled(x, m))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, maps_dir):
    out = tmp_path_factory.mktemp("ckpt") / "amortized"
    cfg = AmortizedTrainConfig(
        steps=60, batch_size=8, width=8, val_every=30, warmup_steps=5, val_images_every=3
    )
    result = train_amortized(maps_dir, out, cfg, log=lambda _: None)
    return out, result


def test_training_writes_a_checkpoint_for_the_parts_it_imitates(checkpoint):
    out, result = checkpoint
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["kind"] == "amortized-eig" and meta["parts"]["classifier"]["sha256"] == "c" * 64
    assert meta["config"]["grid"] == GRID and meta["config"]["target_scale"] > 0
    history = meta["training"]["history"]
    assert len(history) == 2 and history[-1]["train_loss"] < history[0]["train_loss"] * 1.5
    assert out.with_name("amortized.train.json").is_file()  # resume pair
    net, _ = load_network(out)
    assert net.config.width == 8
    # per-step validation: every step of the sessions, and together they are the whole validation set
    metrics = meta["metrics"]
    by_step = metrics["by_step"]
    assert sorted(by_step) == ["1", "2", "3"]
    assert sum(m["maps"] for m in by_step.values()) == metrics["val_maps"]
    top1 = sum(m["top1"] * m["maps"] for m in by_step.values()) / metrics["val_maps"]
    assert top1 == pytest.approx(metrics["top1"])
    assert by_step["1"]["maps"] == metrics["val_maps"] // 3


def test_policy_scans_only_new_ground_and_stops_on_its_prediction(checkpoint, world, parts):
    out, _ = checkpoint
    clf, _ = parts
    policy = get_policy("amortized", amortized_checkpoint=str(out))
    assert isinstance(policy, AmortizedPolicy) and not policy.needs_eig
    ds = ToyDataset(world, n=2, seed=5)
    cand = CandidateGrid.from_grid(8, 4, GRID)
    item = ds[0]
    result = run_session(item["img"][None], classifier=clf, policy=policy, candidates=cand, scans=4)
    chosen = [s.candidate for s in result.steps[1:]]
    assert len(chosen) == 4
    seen = torch.zeros(1, 8, 8)
    for c in chosen:  # every scan reveals something not seen before
        assert bool((cand.masks[c] * (seen < 0.5)).any())
        seen = torch.maximum(seen, cand.masks[c])
    stopped = run_session(
        item["img"][None],
        classifier=clf,
        policy=policy,
        candidates=cand,
        scans=4,
        stopping=StoppingRule(eig_below=1e9),
    )
    assert stopped.stopped_early and stopped.scans_used == 0
    assert (
        run_session(
            item["img"][None],
            classifier=clf,
            policy=policy,
            candidates=cand,
            scans=2,
            stopping=StoppingRule(eig_below=-1e9),
        ).scans_used
        == 2
    )


def test_the_stopping_check_and_the_choice_share_one_forward_pass(checkpoint, world, parts):
    out, _ = checkpoint
    clf, _ = parts
    policy = get_policy("amortized", amortized_checkpoint=str(out))
    net = policy.network
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    cand = CandidateGrid.from_grid(8, 4, GRID)
    image = ToyDataset(world, n=1, seed=5)[0]["img"][None]
    result = run_session(
        image, classifier=clf, policy=policy, candidates=cand, scans=3, stopping=StoppingRule(eig_below=-1e9)
    )
    assert result.scans_used == 3 and len(calls) == 3  # one forward pass per step, not two
    mask = torch.zeros(1, 1, 8, 8)
    first = policy.predict(image * mask, mask)
    mask[..., :4, :4] = 1
    second = policy.predict(image * mask, mask)  # another observation: a new pass
    assert len(calls) == 5 and not torch.equal(first, second)
    policy.forget()
    assert torch.equal(policy.predict(image * mask, mask), second) and len(calls) == 6


def test_policy_chooses_over_a_batch_as_it_chooses_one_by_one(checkpoint, world, parts):
    """The amortized half of tests/boed/test_acquisition.py's batch-vs-alone check (that test
    loops over the policies that need no network trained for its grid)."""
    from boed.policies import BatchState, choose_batch

    out, _ = checkpoint
    clf, _ = parts
    policy = get_policy("amortized", amortized_checkpoint=str(out))
    cand = CandidateGrid.from_grid(8, 4, GRID)
    scanned = [[], [0], [5, 6]]
    mask = torch.zeros(3, 1, 8, 8)
    for b, cs in enumerate(scanned):
        for c in cs:
            mask[b, 0] = torch.maximum(mask[b, 0], cand.masks[c])
    observed = world.images[:3] * mask
    state = BatchState(
        step=1, observed=observed, mask=mask, candidates=cand, scanned=scanned,
        generators=[None] * 3, classifier=clf,
    )  # fmt: skip
    together = choose_batch(policy, state).tolist()
    assert together == [policy.choose(state.episode(b)) for b in range(3)]
    assert together[1] != 0  # seen: not chosen again


def test_policy_refuses_bad_checkpoints_and_grids(tmp_path, checkpoint):
    out, _ = checkpoint
    with pytest.raises(BoedError, match="--amortized-checkpoint"):
        load_network(tmp_path / "missing")
    import shutil

    for suffix in (".json", ".safetensors"):
        shutil.copy(out.with_suffix(suffix), (tmp_path / "bad").with_suffix(suffix))
    (tmp_path / "bad.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(BoedError, match="sha256"):
        load_network(tmp_path / "bad")
    with pytest.raises(BoedError, match="5 x 5 grid"):
        AmortizedPolicy(out).check_candidates(CandidateGrid.from_grid(8, 4, 3))


def test_a_run_with_other_checkpoints_is_warned_in_one_line(checkpoint, parts):
    out, _ = checkpoint
    clf, smp = parts
    _, meta = load_network(out)
    assert checkpoint_warnings(meta, clf, smp) == []

    class Other:
        sha256 = "e" * 64

    lines = checkpoint_warnings(meta, Other(), smp)
    assert len(lines) == 1 and "classifier" in lines[0] and "\n" not in lines[0]
    assert not math.isnan(meta["metrics"]["top1"])


def test_simulate_runs_policy_amortized_from_its_checkpoint_and_checks_it_first(checkpoint, world, parts):
    from boed.simulate import SimulationConfig, check_parts, run_simulation
    from tests.boed.toys import FakeStore

    out, _ = checkpoint
    clf, smp = parts
    base = dict(
        images="toy",
        n_images=2,
        scans=2,
        n_samples=4,
        grid=GRID,
        image_size=8,
        patch_size=4,
        policies=("amortized", "random"),
        figure_sessions=0,
        amortized_checkpoint=str(out),
    )
    config = SimulationConfig(**base)
    assert check_parts(config, None, clf, None) == []  # no sampler needed, checkpoint fits
    store = FakeStore()
    run_id = run_simulation(store, ToyDataset(world, n=2), None, clf, config)
    done = [s for s in store.sessions.values() if s["policy"] == "amortized" and s["status"] == "done"]
    assert len(done) == 2 and store.runs[run_id]["status"] == "done"
    with pytest.raises(BoedError, match="grid"):  # refused before the run starts
        check_parts(SimulationConfig(**(base | {"grid": 3})), None, clf, None)


def test_share_of_the_gain_kept_by_hand():
    from benchmarks.amortized import gain_kept

    def rows(right):  # one scan; prob 0.9 on the truth 1 when right, 0.1 when wrong
        return [
            {"image_id": f"i{k}", "truth": 1.0, "probs": [0.1, 0.9 if r else 0.1]}
            for k, r in enumerate(right)
        ]

    out = gain_kept(
        {
            "random": rows([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # 0.1
            "boed": rows([1, 1, 1, 1, 1, 0, 0, 0, 0, 0]),  # 0.5: gain 0.4
            "amortized": rows([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]),  # 0.3: gain 0.2
        },
        scans=1,
    )
    assert math.isnan(out[0]["share_kept"])  # no scan: nobody gains, the share is undefined
    assert out[1]["share_kept"] == pytest.approx(0.5) and out[1]["boed_gain"] == pytest.approx(0.4)
    assert out[1]["share_kept_lo"] <= 0.5 <= out[1]["share_kept_hi"]


def test_the_diagnostic_start_scans_the_given_candidate_first_and_then_follows_the_policy():
    from types import SimpleNamespace

    from benchmarks.amortized import start_at

    class Own:
        def choose_batch(self, state):
            return torch.full((state.mask.shape[0],), 7, dtype=torch.long)

    policy = start_at(Own(), 3)
    empty, seen = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    seen[0, 0, 1, 1] = 1
    assert policy.choose_batch(SimpleNamespace(mask=torch.cat([empty, seen, empty]))).tolist() == [3, 7, 3]
