"""How hard the phantom versions are: full-image AUROC of a classifier trained on a small budget.

For each generator version (``datasets.phantoms`` v1 and v2), trains the ``cpu`` preset AVP-CNN
with the same budget (``--steps`` updates of 64 images, ``--n-train`` training phantoms, one
thread) and evaluates it on ``--n-test`` held-out test phantoms of the same version: AUROC per
finding and for Any on the full image (scikit-learn's ``roc_auc_score``; labels with no positive
among the test images get ``null``). Also reports each label's prevalence (on ``--n-prevalence``
phantoms at 32 px, beside ChestX-ray14's) and each finding's mean contrast
(:func:`datasets.phantoms.finding_contrast`). The versions run one per process, so two can run
side by side; each writes its part and the last one merges them into the JSON.

Deviation from ``boed train-classifier``: the classifier is trained through the classifiers
package with ``p_full=1`` (every training image fully observed) because the quantity measured is
the full-image AUROC; with the preset's mixture of masks a small budget spends most updates on
partial views.

    .venv/bin/python benchmarks/phantom_difficulty.py --versions v1,v2 --steps 250
    .venv/bin/python benchmarks/phantom_difficulty.py --figure docs/figures/phantoms-v1-v2.png
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "phantom_difficulty.json"


def prevalences(version: str, n: int, seed: int) -> dict[str, float]:
    from datasets.labels import LABELS
    from datasets.phantoms import PhantomDataset

    labels = PhantomDataset("train", size=32, n=n, seed=seed, version=version).tensors()[1]
    return {name: float(v) for name, v in zip(LABELS, labels.mean(0).tolist(), strict=True)}


def nih_prevalences() -> dict[str, float]:
    from datasets.phantom_findings import NIH_ANY, NIH_COUNTS, NIH_IMAGES

    return {**{k: v / NIH_IMAGES for k, v in NIH_COUNTS.items()}, "Any": NIH_ANY}


def full_image_auroc(checkpoint: Path, version: str, n_test: int, seed: int) -> dict[str, dict]:
    from sklearn.metrics import roc_auc_score

    from classifiers import load_classifier
    from datasets.phantoms import PhantomDataset

    g = load_classifier(checkpoint)
    ds = PhantomDataset("test", size=g.config.image_size, n=n_test, seed=seed, version=version)
    x, y = ds.tensors()
    with torch.inference_mode():
        p = g.predict(x, torch.ones_like(x)).numpy()
    out = {}
    for j, name in enumerate(g.config.labels):
        col = ds.labels.index(name)
        t = y[:, col].numpy()
        pos = int(t.sum())
        auc = float(roc_auc_score(t, p[:, j])) if 0 < pos < len(t) else None
        out[name] = {"auroc": auc, "pos": pos, "neg": len(t) - pos}
    return out


def run_version(version: str, args) -> dict:
    from classifiers.train import train_classifier
    from datasets.phantoms import finding_contrast

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_classifier(
            Path(tmp) / f"cls-{version}",
            preset="cpu",
            images=f"phantoms-{version}",
            device="cpu",
            workers=0,
            train_overrides={
                "steps": args.steps,
                "n_train": args.n_train,
                "n_val": args.n_val,
                "val_every": args.steps,
                "p_full": 1.0,
                "p_empty": 0.0,
                "warmup_steps": min(50, args.steps // 5),
                "seed": args.seed,
                "num_threads": 1,
            },
            log=lambda *_: None,
        )
        train_s = time.perf_counter() - t0
        auroc = full_image_auroc(result.checkpoint, version, args.n_test, args.seed)
    contrast = finding_contrast(args.n_contrast, 64, seed=args.seed, version=version)
    found = [v["auroc"] for k, v in auroc.items() if k != "Any" and v["auroc"] is not None]
    return {
        "generator": f"datasets.phantoms {version}",
        "train_seconds": round(train_s, 1),
        "full_image_auroc": auroc,
        "mean_finding_auroc": float(np.mean(found)) if found else None,
        "prevalence": prevalences(version, args.n_prevalence, args.seed),
        "finding_contrast": contrast,
        "mean_finding_contrast": float(np.mean([c["mean"] for c in contrast.values()])),
    }


def figure(path: Path, n: int = 6, size: int = 128, seed: int = 3) -> None:
    """A grid: ``n`` v1 phantoms (top row), ``n`` v2 phantoms (bottom row), finding boxes drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from datasets.phantoms import generate_phantoms

    fig, axes = plt.subplots(2, n, figsize=(2.1 * n, 4.6))
    colours = plt.get_cmap("tab10")
    for row, version in enumerate(("v1", "v2")):
        batch = generate_phantoms(n, size, seed=seed, prevalence=1.0, version=version)
        for i in range(n):
            ax = axes[row, i]
            ax.imshow(batch.images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            for k, f in enumerate(batch.findings[i]):
                r0, c0, r1, c1 = f.bbox
                ax.add_patch(
                    Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, lw=1.2, ec=colours(k))
                )
                ax.text(c0, r0 - 1.5, f.name, color=colours(k), fontsize=6.5, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(f"phantoms {version}", fontsize=10)
    fig.suptitle("Phantoms v1 (top) and v2 (bottom), same seed, every image with findings; boxes: findings")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="v1,v2")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--n-prevalence", type=int, default=4000)
    ap.add_argument("--n-contrast", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--figure", type=Path, default=None, help="only draw the v1/v2 example grid here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.figure is not None:
        figure(args.figure)
        print(f"wrote {args.figure}")
        return
    for version in args.versions.split(","):
        part = run_version(version, args)
        # merge with what another process wrote for the other version
        data = json.loads(args.json.read_text()) if args.json.is_file() else {}
        data.setdefault("versions", {})[version] = part
        data["budget"] = {
            "preset": "cpu (64 px)",
            "steps": args.steps,
            "batch_size": 64,
            "n_train": args.n_train,
            "p_full": 1.0,
            "threads": 1,
            "n_test": args.n_test,
            "seed": args.seed,
        }
        data["nih_prevalence"] = nih_prevalences()
        data["command"] = f".venv/bin/python benchmarks/phantom_difficulty.py --steps {args.steps}"
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        auc = part["full_image_auroc"]
        print(
            version,
            f"train {part['train_seconds']} s, mean finding AUROC {part['mean_finding_auroc']:.3f},",
            f"Any {auc['Any']['auroc']:.3f}, mean contrast {part['mean_finding_contrast']:.4f}",
        )
        for name, v in auc.items():
            a = v["auroc"]
            print(f"  {name:20s} {'-' if a is None or math.isnan(a) else f'{a:.3f}'} ({v['pos']} pos)")


if __name__ == "__main__":
    main()
