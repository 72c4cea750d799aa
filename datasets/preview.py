"""A preview grid of a dataset: images with their labels, and finding outlines for phantoms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from datasets.base import ImageDataset
from datasets.labels import FINDINGS

# short names so titles fit under small panels
SHORT = {
    "Atelectasis": "Atel",
    "Cardiomegaly": "Cardio",
    "Effusion": "Effus",
    "Infiltration": "Infil",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneum",
    "Pneumothorax": "PTX",
    "Consolidation": "Consol",
    "Edema": "Edema",
    "Emphysema": "Emph",
    "Fibrosis": "Fibro",
    "Pleural_Thickening": "PlThick",
    "Hernia": "Hernia",
}
# one fixed colour per finding (tab20 order), so a finding looks the same in every preview
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
)


def label_text(names, values: np.ndarray) -> str:
    """``"Mass, Effus"``, ``"No Finding"`` or ``"unlabelled"`` for one label vector."""
    pairs = [(n, v) for n, v in zip(names, values, strict=True) if n != "Any"]
    if all(np.isnan(v) for _, v in pairs):
        return "unlabelled"
    present = [SHORT.get(n, n) for n, v in pairs if v == 1]
    unknown = sum(np.isnan(v) for _, v in pairs)
    text = ", ".join(present) if present else "No Finding"
    return text + (f" (+{unknown}?)" if unknown and present else "")


def write_preview(
    ds: ImageDataset,
    out: str | Path,
    *,
    n: int = 16,
    cols: int | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write a grid of the first ``n`` images of ``ds`` to ``out`` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(out)
    n = min(n, len(ds))
    if n == 0:
        raise ValueError("the dataset is empty: nothing to preview")
    cols = cols or min(n, math.ceil(math.sqrt(n * 1.5)))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.45 * rows), squeeze=False)
    findings = getattr(ds, "findings", None)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        item = ds[k]
        img = item["img"][0].numpy()
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{item['idx']}\n{label_text(ds.labels, item['lab'].numpy())}", fontsize=7)
        if callable(findings):
            for f in findings(k):
                colour = COLOURS[FINDINGS.index(f.name) % len(COLOURS)] if f.name in FINDINGS else "#ff0000"
                r0, c0, r1, c1 = f.bbox
                ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=1.0, ec=colour))
    if title is None:
        d = ds.describe()
        title = f"{d.get('source')} {d.get('split')} - {len(ds)} images of {d.get('size')} px"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
