"""Known answers for the sampler fidelity metrics (generative.metrics), against skimage where it has them."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from generative.metrics import fidelity, l1_missing, maem, mse_missing, psnr, ssim, summarise


def _case():
    truth = torch.zeros(1, 1, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., :2, :] = 0  # top half missing: 8 pixels
    comp = truth.clone().unsqueeze(0).repeat(2, 1, 1, 1, 1)
    comp[0, 0, 0, 0, :] = 0.5  # 4 missing pixels off by 0.5
    comp[1, 0, 0, 1, 0] = 0.01  # 1 missing pixel off by 0.01 (within 5/255)
    comp[1, 0, 0, 3, 3] = 0.9  # an observed pixel: ignored by the missing-pixel metrics
    return comp, truth, mask


def test_missing_pixel_errors_by_hand():
    comp, truth, mask = _case()
    assert torch.allclose(l1_missing(comp, truth, mask), torch.tensor([[4 * 0.5 / 8], [0.01 / 8]]))
    assert torch.allclose(mse_missing(comp, truth, mask), torch.tensor([[4 * 0.25 / 8], [0.0001 / 8]]))
    assert torch.allclose(maem(comp, truth, mask), torch.tensor([[4 / 8], [1.0]]))


def test_maem_tolerance_edge_and_nothing_missing():
    truth = torch.zeros(1, 1, 2, 2)
    comp = torch.full((1, 1, 1, 2, 2), 5 / 255)
    assert float(maem(comp, truth, torch.zeros_like(truth))) == 1.0
    assert float(maem(comp + 1e-4, truth, torch.zeros_like(truth))) == 0.0
    assert float(maem(comp + 1.0, truth, torch.ones_like(truth))) == 1.0


def test_psnr_and_ssim_agree_with_skimage():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 32, 32, generator=g)
    comp = (truth.unsqueeze(0) + 0.1 * torch.randn(3, 2, 1, 32, 32, generator=g)).clamp(0, 1)
    p, s = psnr(comp, truth), ssim(comp, truth)
    for i in range(3):
        for b in range(2):
            a, t = comp[i, b, 0].double().numpy(), truth[b, 0].double().numpy()
            assert abs(float(p[i, b]) - peak_signal_noise_ratio(t, a, data_range=1.0)) < 1e-3
            ref = structural_similarity(
                t, a, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
            )
            assert abs(float(s[i, b]) - ref) < 5e-3  # the two differ only in how borders are padded


def test_summarise_best_of_n_direction():
    comp, truth, mask = _case()
    comp, truth, mask = (torch.nn.functional.pad(t, (0, 12, 0, 12), value=1.0) for t in (comp, truth, mask))
    out = summarise(fidelity(comp, truth, mask))
    assert np.isclose(out["l1_best"], 0.01 / 8) and np.isclose(out["l1"], (0.25 + 0.01 / 8) / 2)
    assert out["maem_best"] == 1.0 and out["psnr_best"] >= out["psnr"]


def test_quality_script_scores_a_sampler(tmp_path):
    from benchmarks.sampler_quality import evaluate_quality
    from generative.registry import build_sampler, untrained_checkpoint

    sampler = build_sampler("aipo", untrained_checkpoint("aipo", tmp_path / "t"), preset="tiny")
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = evaluate_quality(sampler, images, ["centre_square"], n_samples=2, seed=0, batch=2)
    row = out["masks"]["centre_square"]
    assert 0 < row["l1_best"] <= row["l1"] and row["psnr_best"] >= row["psnr"] and row["diversity_l1"] > 0
    assert out["seconds_per_10"] > 0


def test_summarise_weights_the_mean_of_a_weighted_sampler():
    values = {"l1": torch.tensor([[0.1], [0.5]])}
    assert np.isclose(summarise(values)["l1"], 0.3)
    lw = torch.log(torch.tensor([[0.75], [0.25]]))
    out = summarise(values, lw)
    assert np.isclose(out["l1"], 0.75 * 0.1 + 0.25 * 0.5) and np.isclose(out["l1_best"], 0.1)
