"""The evaluation engine on a toy world with a known posterior: chunks, cache, merge, calibration."""

from __future__ import annotations

import json

import pytest
import torch

from boed.errors import BoedError
from boed.evaluation import engine, summary
from boed.protocols import Completions
from generative.evaluation import pairwise_distance
from generative.metrics import fidelity, summarise

SIZE = 16
SCORERS = engine.Scorers(fidelity=fidelity, summarise=summarise, pairwise=pairwise_distance)


def world(n: int, seed: int = 0) -> torch.Tensor:
    """Images of one constant intensity c ~ U(0, 1) each: any observed pixel reveals c."""
    c = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    return c.view(n, 1, 1, 1).expand(n, 1, SIZE, SIZE).clone()


class PosteriorSampler:
    """The exact posterior of :func:`world`: c where a pixel is observed, else c ~ U(0, 1)."""

    name, image_size = "posterior", SIZE

    def __init__(self, biased: bool = False):
        self.biased, self.calls = biased, 0

    def sample(self, observed, mask, n, generator=None):
        self.calls += 1
        b = len(observed)
        seen = mask.flatten(1).sum(1) > 0
        known = (observed * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        prior = torch.full((n, b), 0.5) if self.biased else torch.rand(n, b, generator=generator)
        c = torch.where(seen[None], known[None], prior)
        fill = c.view(n, b, 1, 1, 1).expand(n, b, 1, SIZE, SIZE)
        return Completions(images=torch.where(mask.bool()[None], observed[None], fill), log_weights=None)


class MeanClassifier:
    """g(Any | x⊙m) = the mean observed intensity (a calibrated posterior in :func:`world` when the
    label is Bernoulli(c)); features = (mean, mean², observed fraction)."""

    labels, image_size, name, sha256 = ("Any", "Other"), SIZE, "mean", "0" * 64

    def predict(self, observed, mask):
        m = (observed * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        m = torch.where(mask.flatten(1).sum(1) > 0, m, torch.full_like(m, 0.5))
        return torch.stack([m, 1 - m], 1)

    def features(self, observed, mask):
        p = self.predict(observed, mask)[:, 0]
        return torch.stack([p, p**2, mask.flatten(1).mean(1)], 1)


def config(**kw):
    return engine.EvalConfig(**({"n_samples": 4, "chunk_size": 4, "batch": 3} | kw))


def run(tmp_path, sampler, images, cfg, indices=None, name="posterior"):
    cache = engine.ChunkCache(tmp_path / "cache", name, cfg.fingerprint(n=len(images)))
    return engine.evaluate_sampler(sampler, MeanClassifier(), images, cfg, SCORERS, cache, indices=indices)


def test_chunks_are_independent_of_order_and_merge_to_the_whole(tmp_path):
    images, cfg = world(10), config()
    whole = run(tmp_path / "a", PosteriorSampler(), images, cfg)
    plan = engine.chunks(10, cfg.chunk_size)
    assert plan == [(0, 4), (4, 8), (8, 10)]
    parts = [run(tmp_path / "b", PosteriorSampler(), images, cfg, indices=[c]) for c in reversed(plan)]
    merged = engine.merge(parts)
    assert merged["index"].tolist() == list(range(10))
    for key, value in whole.items():
        assert torch.equal(value.nan_to_num(-9), merged[key].nan_to_num(-9)), key
    assert whole["features"].shape == (len(cfg.settings), 10, 3)
    assert whole["probs"].shape == (len(cfg.settings), 10, 4, 2)


def test_cached_chunks_are_loaded_not_recomputed_and_a_torn_one_is_redone(tmp_path):
    images, cfg = world(8), config()
    first = PosteriorSampler()
    a = run(tmp_path, first, images, cfg)
    assert first.calls > 0
    again = PosteriorSampler()
    b = run(tmp_path, again, images, cfg)
    assert again.calls == 0 and torch.equal(a["rank"], b["rank"])
    path = tmp_path / "cache" / "posterior" / "chunk-000004-000008.safetensors"
    path.write_bytes(path.read_bytes()[:50])  # a kill mid-write (without the atomic rename)
    torn = PosteriorSampler()
    c = run(tmp_path, torn, images, cfg)
    assert torn.calls == len(cfg.settings) * 2  # one chunk of 4 images in batches of 3
    assert torch.equal(a["rank"], c["rank"])


def test_a_cache_made_with_other_settings_is_refused(tmp_path):
    images = world(4)
    run(tmp_path, PosteriorSampler(), images, config())
    with pytest.raises(BoedError, match="n_samples differ"):
        run(tmp_path, PosteriorSampler(), images, config(n_samples=3))
    meta = tmp_path / "cache" / "posterior" / "meta.json"
    assert json.loads(meta.read_text())["n_samples"] == 4  # nothing overwritten


def test_exact_posterior_is_calibrated_and_a_point_estimate_is_not(tmp_path):
    images, cfg = world(120, seed=1), config(n_samples=5, chunk_size=40, batch=40, settings=("squares-0",))
    good = engine.SamplerResult("posterior", run(tmp_path, PosteriorSampler(), images, cfg))
    bad = engine.SamplerResult(
        "biased", run(tmp_path, PosteriorSampler(biased=True), images, cfg, name="biased")
    )
    g = summary.headline(good, cfg.settings, 0, SCORERS)
    b = summary.headline(bad, cfg.settings, 0, SCORERS)
    assert g["rank_p"] > 1e-3 and b["rank_p"] < 1e-6
    assert sum(g["rank_hist"]) == 120
    assert b["div_pixel"] == 0 and g["div_pixel"] > 0.1
    # the fake set of the exact posterior is a draw from the test distribution: FID ≈ 0
    assert g["fid_agg"] < 0.05 < b["fid_agg"]
    # classifier on the empty observation: 0.5; mean over exact-posterior completions: E[c] = 0.5
    assert abs(g["gap"]) < 0.06 and b["gap"] == pytest.approx(0.0, abs=1e-6)
    assert g["inception_score"] > 1.2 and b["inception_score"] == pytest.approx(1.0)


def test_observed_squares_pin_the_completions(tmp_path):
    images, cfg = world(6), config(settings=("squares-0", "squares-2", "holes"))
    result = engine.SamplerResult("posterior", run(tmp_path, PosteriorSampler(), images, cfg))
    rows = {r["setting"]: r for r in summary.setting_rows(result, cfg.settings, 0, SCORERS)}
    assert rows["squares-0"]["observed_frac"] == 0
    assert rows["holes"]["observed_frac"] > rows["squares-2"]["observed_frac"] > 0
    assert rows["squares-2"]["l1"] == pytest.approx(0.0, abs=1e-6)  # one observed pixel reveals c
    assert rows["squares-0"]["l1"] > 0.1


def test_masks_are_shared_across_samplers_and_unknown_settings_refused():
    g = lambda: torch.Generator().manual_seed(engine.stream_seed(0, "holes", 0, "mask"))  # noqa: E731
    assert torch.equal(
        engine.setting_masks("holes", 3, SIZE, g()), engine.setting_masks("holes", 3, SIZE, g())
    )
    assert engine.normalise_setting("centre") == "centre_square"
    with pytest.raises(BoedError, match="unknown mask setting 'nope'"):
        engine.normalise_setting("nope")
    with pytest.raises(BoedError, match="chunk-size"):
        engine.chunks(3, 0)


def test_cost_is_measured():
    cost = engine.measure_cost(PosteriorSampler(), world(1), torch.ones(1, 1, SIZE, SIZE), n=10, repeats=3)
    assert cost["seconds_per_10"] > 0 and cost["repeats"] == 3


def test_peak_tensor_memory_sees_a_known_allocation():
    def work():
        a = torch.ones(1024, 1024, 2)  # 8 MiB of float32, alive together with b
        b = a * 2
        return float(b.sum())

    assert engine.peak_tensor_memory(work) >= 15.9
    assert engine.peak_tensor_memory(lambda: None) == 0
