"""A small fake image dataset with learnable labels (used until/besides the real phantoms)."""

from __future__ import annotations

import torch

from datasets.labels import LABELS


class FakeDataset(torch.utils.data.Dataset):
    """``n`` images of side ``size``: finding j present <=> a bright square in cell j of a 4x4 grid.

    Only the first ``n_findings`` findings ever occur; the rest are always 0 (so their AUROC is
    undefined). ``Any`` follows the findings. Deterministic for a seed.
    """

    def __init__(
        self, n: int = 64, size: int = 32, seed: int = 0, n_findings: int = 2, nan_fraction: float = 0.0
    ):
        g = torch.Generator().manual_seed(seed)
        self.labels = LABELS
        self.ids = [f"fake-{seed}-{i}" for i in range(n)]
        present = (torch.rand(n, n_findings, generator=g) < 0.4).float()
        lab = torch.zeros(n, len(LABELS))
        lab[:, :n_findings] = present
        lab[:, -1] = (present.sum(1) > 0).float()
        img = 0.2 + 0.05 * torch.rand(n, 1, size, size, generator=g)
        cell = size // 4
        for j in range(n_findings):
            r, c = divmod(j, 4)
            img[present[:, j] > 0, :, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] += 0.6
        if nan_fraction:
            lab[torch.rand(lab.shape, generator=g) < nan_fraction] = float("nan")
        self.images, self.lab = img.clamp(0, 1), lab
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"idx": self.ids[i], "img": self.images[i], "lab": self.lab[i]}

    def tensors(self):
        return self.images, self.lab

    def describe(self) -> dict:
        return {"source": "fake", "n": len(self), "seed": self.seed}
