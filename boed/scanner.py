"""The simulated small field-of-view scanner and the grid of candidate scan locations.

A scan at location ``(row, col)`` reveals the ``p x p`` patch of the hidden image whose top-left
pixel is there. The candidates are the ``G x G`` evenly spaced valid locations
(``datasets.masks.grid_locations``; 17 x 17 in the paper, appendix B.4 of
Harvey et al., "Image Completion via Inference in Deep Generative Models" (2021)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from boed.errors import BoedError


@dataclass(frozen=True)
class CandidateGrid:
    """Candidate scan locations and their patch masks.

    Attributes:
        locations: ``(K, 2)`` long tensor of (row, col) top-left pixels.
        masks: ``(K, 1, S, S)`` float32 patch masks (1 inside the patch).
        image_size: ``S``.
        patch_size: ``p``.
        grid: ``G`` when the locations form a ``G x G`` grid in row-major order, else 0.
    """

    locations: torch.Tensor
    masks: torch.Tensor
    image_size: int
    patch_size: int
    grid: int = 0

    @classmethod
    def from_grid(cls, image_size: int, patch_size: int, grid: int = 17) -> CandidateGrid:
        """The ``grid x grid`` evenly spaced valid locations, row-major."""
        from datasets.masks import grid_locations

        if not 0 < patch_size <= image_size:
            raise BoedError(f"scan patch {patch_size} px does not fit a {image_size} px image")
        if grid < 1:
            raise BoedError(f"--grid must be at least 1, got {grid}")
        locations = grid_locations(image_size, patch_size, grid=grid)
        return cls.from_locations(locations, image_size, patch_size, grid=grid)

    @classmethod
    def from_locations(
        cls, locations: torch.Tensor, image_size: int, patch_size: int, grid: int = 0
    ) -> CandidateGrid:
        from datasets.masks import patch_masks

        locations = torch.as_tensor(locations, dtype=torch.long).reshape(-1, 2)
        if locations.numel() and (locations.min() < 0 or locations.max() > image_size - patch_size):
            raise BoedError(f"candidate locations must lie in [0, {image_size - patch_size}]")
        masks = patch_masks(locations, image_size, patch_size).float()
        return cls(locations, masks, image_size, patch_size, grid)

    def __len__(self) -> int:
        return int(self.locations.shape[0])

    def location(self, index: int) -> tuple[int, int]:
        row, col = self.locations[index].tolist()
        return int(row), int(col)

    def index_of(self, location: tuple[int, int]) -> int | None:
        """The index of the candidate at ``(row, col)``, or None when no candidate is there."""
        hits = (
            (self.locations[:, 0] == int(location[0])) & (self.locations[:, 1] == int(location[1]))
        ).nonzero()
        return int(hits[0, 0]) if hits.numel() else None

    def as_map(self, values: torch.Tensor) -> torch.Tensor:
        """Reshape per-candidate values ``(..., K)`` to ``(..., G, G)`` (needs a full grid)."""
        if not self.grid or self.grid * self.grid != len(self):
            raise BoedError("candidates do not form a square grid")
        return values.reshape(*values.shape[:-1], self.grid, self.grid)


class Scanner:
    """Reveals patches of one hidden image ``(1, 1, S, S)``; keeps the mask of what has been seen."""

    def __init__(self, image: torch.Tensor, candidates: CandidateGrid):
        if image.dim() != 4 or image.shape[:2] != (1, 1) or image.shape[-1] != candidates.image_size:
            raise BoedError(
                f"the scanner expects one image (1, 1, {candidates.image_size}, {candidates.image_size}), "
                f"got {tuple(image.shape)}"
            )
        self.image = image
        self.candidates = candidates
        self.mask = torch.zeros_like(image)
        self.scanned: list[int] = []

    @property
    def observed(self) -> torch.Tensor:
        """``x * m``: the hidden image where it has been seen, 0 elsewhere."""
        return self.image * self.mask

    def scan(self, index: int) -> torch.Tensor:
        """Scan candidate ``index``: the mask grows by its patch; returns the new mask."""
        if not 0 <= index < len(self.candidates):
            raise BoedError(f"candidate index {index} out of range [0, {len(self.candidates)})")
        self.mask = torch.maximum(self.mask, self.candidates.masks[index : index + 1].to(self.mask))
        self.scanned.append(int(index))
        return self.mask
