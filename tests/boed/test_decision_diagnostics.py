"""Per-step diagnostics of a decision (EIG standard error, ESS, sampler-classifier agreement),
with known answers in the exact toy world, and their way into the store."""

from __future__ import annotations

import math

import pytest
import torch

from boed.policies import get_policy
from boed.scanner import CandidateGrid
from boed.session import run_session
from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyWorld


@pytest.fixture
def world():
    return ToyWorld(seed=4)


@pytest.fixture
def grid(world):
    return CandidateGrid.from_grid(world.size, world.patch, grid=3)


def _boed(world, grid, sampler, classifier=None, scans=2):
    return run_session(
        world.images[1:2],
        classifier=classifier or BayesClassifier(world),
        policy=get_policy("boed"),
        candidates=grid,
        scans=scans,
        sampler=sampler,
        n_samples=6,
        generator=torch.Generator().manual_seed(0),
    )


def test_exact_posterior_and_bayes_classifier_agree_exactly(world, grid):
    # E_{x ~ p(x | obs)} g(v | x) = p(v | obs) = g(v | obs): no gap; the weighted ESS is 1/Σw²
    result = _boed(world, grid, PosteriorSampler(world, exact=True))
    assert result.steps[0].diagnostics is None
    for before, record in zip(result.steps, result.steps[1:], strict=False):
        d = record.diagnostics
        assert d is not None and set(d) == {"eig_se", "ess", "target_observed", "target_completions"}
        assert math.isclose(d["target_observed"], d["target_completions"], abs_tol=1e-6)
        assert math.isclose(
            d["target_observed"], before.probs[BayesClassifier(world).labels.index("Any")], abs_tol=1e-6
        )
        post = world.consistent(*_view(world, result, record.step))
        w = post[post > 0]
        assert math.isclose(d["ess"], float(1 / (w**2).sum()), rel_tol=1e-6)


def _view(world, result, step):
    # the observation the decision of `step` saw: the patches of the earlier steps
    image = world.images[1:2]
    mask = torch.zeros_like(image)
    for r in result.steps[1:step]:
        row, col = r.location
        mask[..., row : row + world.patch, col : col + world.patch] = 1
    return (image * mask)[0], mask[0]


def test_equal_weights_give_ess_n_and_a_standard_error(world, grid):
    result = _boed(world, grid, PosteriorSampler(world))
    d = result.steps[1].diagnostics
    assert d["ess"] == pytest.approx(6.0) and d["eig_se"] >= 0


class _Biased(BayesClassifier):
    """Reads fully observed images as more positive than partial ones: a sampler-classifier gap."""

    def predict(self, observed, mask):
        p = super().predict(observed, mask)
        full = mask.flatten(1).all(1, keepdim=True)
        return torch.where(full, (p + 0.3).clamp(max=1.0), p)


def test_a_classifier_that_reads_completions_differently_shows_a_gap(world, grid):
    result = _boed(world, grid, PosteriorSampler(world, exact=True), classifier=_Biased(world))
    d = result.steps[1].diagnostics
    assert d["target_completions"] - d["target_observed"] > 0.05


def test_simulation_stores_diagnostics_and_the_report_shows_them(tmp_path, world):
    import pandas as pd

    from boed.report import build_report
    from boed.simulate import SimulationConfig, run_simulation
    from boed.store import Store
    from tests.boed.toys import ToyDataset

    store = Store.open(str(tmp_path / "s.db"))
    config = SimulationConfig(images="toy", n_images=4, scans=2, n_samples=4, grid=3, image_size=8,
                              patch_size=4, policies=("boed", "random"))  # fmt: skip
    run_id = run_simulation(
        store, ToyDataset(world, n=4), PosteriorSampler(world), BayesClassifier(world), config
    )
    steps = store.steps(run_id)
    boed = steps[(steps["policy"] == "boed") & (steps["step"] > 0)]
    others = steps[(steps["policy"] != "boed") | (steps["step"] == 0)]
    assert boed[["eig_se", "ess", "target_observed", "target_completions"]].notna().all().all()
    assert (boed["ess"] == 4).all()
    assert others[["eig_se", "ess", "target_observed", "target_completions"]].isna().all().all()
    index = build_report(store, run_id, tmp_path / "rep")
    page = index.read_text()
    assert "Decision diagnostics" in page and "Paired comparison" in page
    table = pd.read_csv(tmp_path / "rep" / "diagnostics.csv")
    assert list(table["policy"].unique()) == ["boed"] and list(table["scans"]) == [1, 2]
    paired = pd.read_csv(tmp_path / "rep" / "paired.csv")
    assert set(paired["policy"]) == {"boed"} and (paired["reference"] == "random").all()
