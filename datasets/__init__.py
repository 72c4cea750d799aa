"""Image sources, the label schema, mask distributions and image conventions.

Images are float32 ``(B, 1, H, W)`` in [0, 1] (MONOCHROME2: air dark, bone bright); masks the same
shape in {0, 1} with 1 = observed; labels ``(B, L)`` float32 with NaN = unknown. This package
imports nothing else of the project.
"""

from datasets.labels import ANY, FINDINGS, LABELS

__all__ = ["ANY", "FINDINGS", "LABELS"]
