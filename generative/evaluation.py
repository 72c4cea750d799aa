"""Sampler metrics on held-out images (pure functions) and the Fig. 8-style completion grid.

Following §4 and appendix B.4 of Harvey et al., "Image Completion via Inference in Deep Generative Models"
(2021), adapted to what runs on a CPU:

* ``elbo_bpd``: the unconditional VAE's negative ELBO (Eq. 2) in bits/dim (lower is better).
* ``cond_bpd`` at 0..5 observed squares of side 35 % (``datasets.masks.squares_masks``): the
  negative conditional bound of Eq. 10 on −log p(I | Î), bits/dim. It should fall as squares are
  added and be close to the ELBO at 0 squares (then q̂ should match the prior).
* ``diversity_l1`` / ``diversity_l2``: mean pairwise distance between the completions of one input
  (mean absolute / root-mean-square pixel difference over the whole image), the paper's LPIPS
  diversity with a pixel distance (LPIPS needs downloaded weights). Falls as squares are added.
* Any accuracy of a classifier on the completions vs on the true images, when a function for it is
  given (generative/ does not import classifiers/; the CLI passes one). Without one the accuracies
  are ``None`` and ``any_accuracy_skipped`` says why (e.g. the classifier's labels differ from the
  data's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SIDE_FRAC = 0.35


def pairwise_distance(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean pairwise (L1, RMS) pixel distance between the n completions of each input, ``(B,)`` each.

    ``samples`` ``(n, B, 1, H, W)``, n ≥ 2.
    """
    n = samples.shape[0]
    flat = samples.flatten(2)  # (n, B, D)
    diff = flat.unsqueeze(0) - flat.unsqueeze(1)  # (n, n, B, D)
    pairs = n * (n - 1)
    l1 = diff.abs().mean(-1).sum((0, 1)) / pairs
    l2 = diff.pow(2).mean(-1).sqrt().sum((0, 1)) / pairs
    return l1, l2


def evaluate(
    sampler: Any,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    n_samples: int = 8,
    max_squares: int = 5,
    seed: int = 0,
    batch: int = 16,
    any_accuracy: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    skip_reason: str | None = None,
) -> dict[str, Any]:
    """All metrics for ``sampler`` on ``images`` ``(N, 1, S, S)`` (and ``labels`` ``(N, L)``).

    ``any_accuracy(images (M, 1, S, S), labels (M, L)) -> float`` scores the classifier; when it
    (or ``labels``) is missing, ``any_accuracy_truth`` and every row's ``any_accuracy_completions``
    are ``None`` and ``any_accuracy_skipped`` holds ``skip_reason`` (a note says the same).
    """
    from datasets.masks import squares_masks

    n, size = len(images), images.shape[-1]
    dims = images[0].numel()
    to_bpd = 1.0 / (dims * math.log(2.0))
    model = getattr(sampler, "model", None)
    if not hasattr(model, "bounds"):  # only the hierarchical VAE has the ELBO and the Eq. 10 bound
        model = None
    gen = torch.Generator().manual_seed(seed)
    notes: list[str] = []
    result: dict[str, Any] = {
        "sampler": sampler.name,
        "sha256": getattr(sampler, "sha256", None) or "",
        "n_images": n,
        "n_samples": n_samples,
        "side_frac": SIDE_FRAC,
    }
    if model is not None:
        torch.manual_seed(seed)
        zero = torch.zeros_like(images)
        elbo = torch.cat(
            [model.bounds(images[i : i + batch], zero[i : i + batch])["elbo"] for i in range(0, n, batch)]
        )
        result["elbo_bpd"] = float(-elbo.mean() * to_bpd)
    else:
        result["elbo_bpd"] = float("nan")
        notes.append("no bounds: the sampler has no hierarchical VAE")
    scored = any_accuracy is not None and labels is not None
    if scored:
        result["any_accuracy_truth"] = any_accuracy(images, labels)
        result["any_accuracy_skipped"] = None
    else:
        reason = skip_reason or ("no labels" if any_accuracy is not None else "no classifier given")
        result["any_accuracy_truth"] = None
        result["any_accuracy_skipped"] = reason
        notes.append(f"classifier Any accuracy skipped: {reason}")
    rows = []
    for k in range(max_squares + 1):
        masks = squares_masks(n, size, k, SIDE_FRAC, gen)
        row: dict[str, Any] = {"squares": k, "observed_frac": float(masks.mean())}
        if model is not None:
            cond = torch.cat(
                [
                    model.bounds(images[i : i + batch], masks[i : i + batch])["cond"]
                    for i in range(0, n, batch)
                ]
            )
            row["cond_bpd"] = float(-cond.mean() * to_bpd)
        else:
            row["cond_bpd"] = float("nan")
        samples = torch.cat(
            [
                sampler.sample(
                    images[i : i + batch] * masks[i : i + batch],
                    masks[i : i + batch],
                    n_samples,
                    generator=gen,
                ).images
                for i in range(0, n, batch)
            ],
            dim=1,
        )  # (n_samples, N, 1, S, S)
        l1, l2 = pairwise_distance(samples)
        row["diversity_l1"], row["diversity_l2"] = float(l1.mean()), float(l2.mean())
        row["mae_to_truth"] = float((samples - images.unsqueeze(0)).abs().mean())
        row["any_accuracy_completions"] = (
            any_accuracy(samples.flatten(0, 1), labels.repeat(n_samples, 1)) if scored else None
        )
        rows.append(row)
    result["by_squares"] = rows
    result["notes"] = notes
    return result


def figure_8(
    sampler: Any,
    images: torch.Tensor,
    path: str | Path,
    *,
    n_completions: int = 5,
    max_squares: int = 5,
    seed: int = 0,
) -> Path:
    """Write the Fig. 8-style grid: per image a panel with rows 0..``max_squares`` observed squares and
    columns ground truth, observation (hidden pixels tinted blue) and ``n_completions`` completions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datasets.masks import squares_masks

    gen = torch.Generator().manual_seed(seed)
    size = images.shape[-1]
    cols = 2 + n_completions
    fig, axes = plt.subplots(
        max_squares + 1,
        cols * len(images),
        figsize=(1.2 * cols * len(images), 1.2 * (max_squares + 1)),
        squeeze=False,
    )
    for b, image in enumerate(images):
        for k in range(max_squares + 1):
            mask = squares_masks(1, size, k, SIDE_FRAC, gen)
            x = image.unsqueeze(0)
            out = sampler.sample(x * mask, mask, n_completions, generator=gen).images[:, 0, 0]
            obs = (x * mask)[0, 0]
            tint = torch.stack([obs, obs, obs + 0.35 * (1 - mask[0, 0])], -1).clamp(0, 1)
            panels = [image[0], tint] + list(out)
            for c, panel in enumerate(panels):
                ax = axes[k, b * cols + c]
                ax.imshow(panel.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(["truth", "observed"][c] if c < 2 else f"sample {c - 1}", fontsize=7)
            axes[k, b * cols].set_ylabel(f"{k} squares", fontsize=7)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
