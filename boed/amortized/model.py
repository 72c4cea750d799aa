"""The value network: the whole EIG map of the candidate grid from the observation, in one pass.

``EIGMapNet(x * m, m) -> (B, K)``: predicted ``EIG(c)`` (nats, Eq. 17 of Harvey, Naderiparizi &
Wood, "Image Completion via Inference in Deep Generative Models", 2021) for the K candidates of
the controller's grid (``K = G^2``, 17 x 17 on the cpu preset). It plays the role of DIME's value
network (Gadgil, Covert & Lee, "Estimating Conditional Mutual Information for Dynamic Feature
Selection", arXiv:2306.03301), which outputs the conditional mutual information of every
candidate feature given the observed ones; here the regression target is the exact controller's
EIG estimate rather than a realised loss improvement (see ``boed.amortized.train``).

Architecture (tensor shapes for the cpu preset, S = 64, p = 16, G = 17, width w = 32)::

    cat([x * m, m, row, col])               (B, 4, 64, 64)   row, col: coordinates in [-1, 1]
    trunk: 4 3x3 convs, stride 2, 2, 1, 1  (B, w, 16, 16)    features F
    patch pooling  P[b, :, k] = sum_hw F[b, :, h, w] A[k, h, w]        (B, w, K)
        A[k] = the patch of candidate k averaged down to the 16 x 16 feature grid, rows summing
        to 1: each candidate reads exactly the features under its own scan
    + global context  mean_hw F, max_hw F   (B, 2w) broadcast to every candidate
    + unseen fraction of each patch (1 - m averaged under A[k])      (B, 1, K)
    + a learned embedding of each candidate's position               (w, G, G)
    head on the G x G grid: 1x1 conv, 3x3 conv, 1x1 conv -> (B, 1, G, G) -> (B, K)

Small on purpose: a decision must cost milliseconds on two CPU cores (about 10 M multiply-adds).

Where a scan is matters as much as what the view shows (the anatomy of a radiograph, and of the
phantoms, sits at fixed places): with nothing observed the input is constant, and only the
coordinate channels (CoordConv: Liu et al., "An Intriguing Failing of Convolutional Neural
Networks and the CoordConv Solution", NeurIPS 2018) and the position embedding let the network
output the first decision's map at all. The patch pooling ties the output to the candidates'
geometry (any grid, any patch size: the candidate masks come from the checkpoint's config,
``boed.scanner.CandidateGrid``), so the head only has to judge what a scan there would add;
the global features carry what the whole observation already says (a finding already seen makes
every scan worth less). The 3x3 head convolution lets neighbouring candidates, whose patches
overlap by 13/16, agree.

About 46 k parameters at w = 32 (0.19 MB in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True)
class EIGNetConfig:
    """The network's geometry and width (saved in its checkpoint's JSON).

    Attributes:
        image_size, patch_size, grid: the candidate grid it predicts (``boed.config`` preset).
        width: channels of the trunk and the head.
        target: the classifier target the maps are for (``any``, ``all`` or a label).
        target_scale: nats per unit of the head's output (the training maps' spread), so the
            network learns values of order 1 and still returns nats.
    """

    image_size: int = 64
    patch_size: int = 16
    grid: int = 17
    width: int = 32
    target: str = "any"
    target_scale: float = 1.0


class EIGMapNet(nn.Module):
    """``forward(observed, mask) -> (B, K)`` predicted EIG (nats) of every candidate (module docstring)."""

    def __init__(self, config: EIGNetConfig):
        super().__init__()
        from boed.scanner import CandidateGrid

        self.config = config
        w = config.width
        self.trunk = nn.Sequential(
            nn.Conv2d(4, w // 2, 3, stride=2, padding=1),  # (B, w/2, S/2, S/2)
            nn.GELU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1),  # (B, w, S/4, S/4)
            nn.GroupNorm(4, w),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
        )
        cand = CandidateGrid.from_grid(config.image_size, config.patch_size, config.grid)
        feat = -(-config.image_size // 4)
        area = F.adaptive_avg_pool2d(cand.masks, feat).flatten(1)  # (K, feat^2)
        self.register_buffer("pool", area / area.sum(1, keepdim=True), persistent=False)
        self.feature_size = feat
        size = config.image_size
        ramp = torch.linspace(-1.0, 1.0, size)
        coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))[None]  # (1, 2, S, S)
        self.register_buffer("coords", coords, persistent=False)
        self.position = nn.Parameter(torch.zeros(1, w, config.grid, config.grid))
        self.head = nn.Sequential(
            nn.Conv2d(4 * w + 1, w, 1),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, 1, 1),
        )

    @property
    def n_candidates(self) -> int:
        return self.config.grid**2

    def forward(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``observed``, ``mask`` ``(B, 1, S, S)`` -> predicted EIG ``(B, K)`` (float32, nats)."""
        b, g = observed.shape[0], self.config.grid
        coords = self.coords.expand(b, -1, -1, -1)
        features = self.trunk(torch.cat([observed * mask, mask, coords], dim=1))  # (B, w, f, f)
        if features.shape[-1] != self.feature_size:  # odd sizes: trunk rounding
            features = F.adaptive_avg_pool2d(features, self.feature_size)
        flat = features.flatten(2)  # (B, w, f^2)
        per_cand = flat @ self.pool.T  # (B, w, K)
        unseen = F.adaptive_avg_pool2d(1.0 - mask, self.feature_size).flatten(1) @ self.pool.T  # (B, K)
        context = torch.cat([flat.mean(2), flat.amax(2)], dim=1)  # (B, 2w)
        k = per_cand.shape[-1]
        x = torch.cat([per_cand, context[:, :, None].expand(-1, -1, k), unseen[:, None]], dim=1)
        x = torch.cat([x.reshape(b, -1, g, g), self.position.expand(b, -1, -1, -1)], dim=1)
        return self.head(x).reshape(b, k) * self.config.target_scale

    def revealing(self, mask: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` bool: candidates whose patch holds a pixel not seen under ``mask`` ``(B, 1, S, S)``."""
        from boed.scanner import CandidateGrid

        if not hasattr(self, "_cand"):
            c = self.config
            self._cand = CandidateGrid.from_grid(c.image_size, c.patch_size, c.grid).masks.to(mask.device)
        return torch.einsum("bchw,kchw->bk", (mask <= 0.5).float(), self._cand.to(mask.device)) > 0
