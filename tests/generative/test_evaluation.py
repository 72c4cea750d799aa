"""Sampler metrics: pairwise diversity (known answers), the evaluation table, the Fig. 8 PNG."""

from __future__ import annotations

import math

import pytest
import torch

from generative.evaluation import evaluate, figure_8, pairwise_distance
from generative.registry import build_sampler

from .checkpoints import write_tiny


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("aipo") / "tiny-aipo", "vae+aipo")


def test_pairwise_distance_known_answer():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.ones(1, 1, 2, 2)
    samples = torch.stack([a, b, a])  # (3, 1, 1, 2, 2): pairs (a,b) 1, (a,a) 0, (b,a) 1
    l1, l2 = pairwise_distance(samples)
    assert l1.item() == pytest.approx(2 / 3)
    assert l2.item() == pytest.approx(2 / 3)
    same = torch.stack([b, b])
    assert pairwise_distance(same)[0].item() == 0


def test_evaluate_table(tiny_checkpoint):
    sampler = build_sampler("aipo", tiny_checkpoint)
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(3, 15)
    calls = []

    def any_accuracy(x, y):
        calls.append(len(x))
        return 0.5

    result = evaluate(sampler, images, labels, n_samples=2, max_squares=2, any_accuracy=any_accuracy)
    assert [r["squares"] for r in result["by_squares"]] == [0, 1, 2]
    assert math.isfinite(result["elbo_bpd"]) and result["elbo_bpd"] > 0
    row0 = result["by_squares"][0]
    assert row0["observed_frac"] == 0 and row0["cond_bpd"] > 0 and row0["diversity_l1"] > 0
    assert result["any_accuracy_truth"] == 0.5 and calls == [3, 6, 6, 6]
    # more observed squares: more observed pixels
    assert result["by_squares"][2]["observed_frac"] > result["by_squares"][1]["observed_frac"]


def test_evaluate_without_classifier_notes_it(tiny_checkpoint):
    sampler = build_sampler("vae", tiny_checkpoint)
    result = evaluate(sampler, torch.rand(2, 1, 32, 32), None, n_samples=2, max_squares=0)
    assert any("classifier" in note for note in result["notes"])


def test_figure_8_png(tiny_checkpoint, tmp_path):
    sampler = build_sampler("aipo", tiny_checkpoint)
    path = figure_8(sampler, torch.rand(2, 1, 32, 32), tmp_path / "fig8.png", n_completions=2, max_squares=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
