"""Pixel Constrained CNN figures on held-out phantoms: speed-up, bits/dim, ground-truth rank, and the
Conditional PixelCNN comparison.

    python benchmarks/pixel_constrained.py --checkpoint CKPT [--baseline CPCNN_CKPT] [--threads 1] \\
        [--n-images 12] [--n-samples 8] [--raster-positions 10] [--seed 0] \\
        [--json benchmarks/results/pixel_constrained.json] [--figure OUT.png]

Sections (Dupont & Suresha, "Probabilistic Semantic Inpainting with Pixel Constrained CNNs" (2019)):

* **speed**: 10 completions of one 64×64 phantom with 70% of its pixels missing (a centred square
  hole of side 0.837·64 = 54 px, 71.2%), by the fast exact method and by the straightforward method
  (:func:`generative.autoregressive.sample_raster` running both networks on the whole canvas per
  pixel), same model, same process. The straightforward method costs the same full-network pass
  at every visited pixel, so it is timed over its first ``--raster-positions`` pixels and scaled to
  all of them (running it in full takes hours on a shared CPU); those first pixels are checked to
  equal the fast method's draws (same seed). Equality of whole samples and likelihoods is tested in
  tests/generative/test_pixel_constrained.py.
* **bits/dim** (test split, per missing pixel of the quantised image) for the training mask mix
  (:func:`generative.pixel_constrained.training_masks`) and a centred hole.
* **ground-truth rank** (§5.4): the rank of the ground truth's likelihood among itself and
  ``--n-samples`` completions (1 = most likely, ``n + 1`` = least); centred-hole masks.
* **border agreement** (§3, §5.2: a Conditional PixelCNN ignores the observed pixels): on masks
  that observe only the bottom half (the case §5.2 calls most severe) and on blob masks, the mean
  over the missing pixels with at least one observed 4-neighbour of ``|x̂_i − mean of its observed
  4-neighbours|`` (lower = completions continue the observed pixels), next to the same quantity for
  the ground truth (the natural step at that border), and the L1 error to the ground truth on those
  border pixels.
* ``--figure``: the Fig. 11-style pixel-probability maps of one phantom
  (:func:`generative.pixel_constrained.pixel_probability_maps`).

Prints a Markdown table; ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def border_pixels(mask):
    """``(B, 1, H, W)`` bool: missing pixels with an observed 4-neighbour; and the neighbours' mean."""
    import torch
    import torch.nn.functional as F

    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 1, 3, 3)
    count = F.conv2d(mask, kernel, padding=1)
    return (mask < 0.5) & (count > 0), count


def border_agreement(images, x, mask) -> dict:
    """The border metrics of the module docstring.

    ``images`` ``(n, B, 1, H, W)``; ``x``, ``mask`` ``(B, 1, H, W)``.
    """
    import torch
    import torch.nn.functional as F

    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 1, 3, 3)
    where, count = border_pixels(mask)
    neighbours = F.conv2d(x * mask, kernel, padding=1) / count.clamp(min=1)  # mean of observed neighbours
    sel = where.expand_as(images)
    step = (images - neighbours).abs()[sel]
    return {
        "border_step": float(step.mean()),
        "border_step_truth": float((x - neighbours).abs()[where].mean()),
        "border_l1": float((images - x).abs()[sel].mean()),
        "border_pixels": int(where.sum()),
    }


def bottom_observed_masks(n: int, size: int):
    import torch

    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 2 :] = 1
    return mask


def speed(model, image, *, raster_positions: int, seed: int) -> dict:
    """Seconds for 10 completions of ``image`` (1, 1, S, S), 70% missing, by both methods."""
    import torch

    from datasets.masks import centre_square_masks
    from generative.autoregressive import raster_positions as positions
    from generative.autoregressive import sample_raster

    size = image.shape[-1]
    mask = centre_square_masks(1, size, side_frac=0.837)
    n, levels = 10, model.config.levels
    with torch.inference_mode():
        t0 = time.perf_counter()
        fast, _ = model.sample(image * mask, mask, n, generator=torch.Generator().manual_seed(seed))
        t_fast = time.perf_counter() - t0
        fn = lambda canvas, m: model.logits(canvas, m)[0]  # noqa: E731
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)
        slow, _ = sample_raster(
            fn, image * mask, mask, n, levels, generator=gen, max_positions=raster_positions
        )
        t_slow = time.perf_counter() - t0
    visited = positions(mask.repeat(n, 1, 1, 1))
    first = visited[:raster_positions]
    same = all(torch.equal(fast[:, :, 0, i, j], slow[:, :, 0, i, j]) for i, j in first)
    per_pixel = t_slow / len(first)
    return {
        "missing_frac": float(1 - mask.mean()),
        "visited_pixels": len(visited),
        "fast_seconds_10": t_fast,
        "raster_seconds_per_pixel": per_pixel,
        "raster_pixels_timed": len(first),
        "raster_seconds_10_extrapolated": per_pixel * len(visited),
        "speedup": per_pixel * len(visited) / t_fast,
        "first_pixels_identical": bool(same),
    }


def likelihood_figures(model, images, *, n_samples: int, seed: int, batch: int = 4) -> dict:
    """Test bits/dim, ground-truth rank (centred holes) and border agreement of one model."""
    import torch

    from datasets.masks import blob_masks, centre_square_masks
    from generative.pixel_constrained import ground_truth_rank, training_masks

    n, size = len(images), images.shape[-1]
    out: dict = {}
    g = torch.Generator().manual_seed(seed)
    mask_sets = {
        "training_mix": training_masks(n, size, g),
        "centre_square": centre_square_masks(n, size),
        "bottom_observed": bottom_observed_masks(n, size),
        "blob": blob_masks(n, size, torch.Generator().manual_seed(seed)),
    }
    with torch.inference_mode():
        for name, masks in mask_sets.items():
            stats = model.validate(images, masks)
            out[f"bpd_{name}"] = float(stats["bpd"])
        ranks, gen = [], torch.Generator().manual_seed(seed)
        masks = mask_sets["centre_square"]
        for i in range(0, n, batch):
            x, m = images[i : i + batch], masks[i : i + batch]
            _, log_lik = model.sample(x * m, m, n_samples, generator=gen)
            ranks.append(ground_truth_rank(model, x, m, log_lik))
        ranks = torch.cat(ranks).float()
        out["gt_rank_mean"] = float(ranks.mean())
        out["gt_rank_top1"] = float((ranks == 1).float().mean())
        for name in ("bottom_observed", "blob"):
            masks, rows = mask_sets[name], []
            for i in range(0, n, batch):
                x, m = images[i : i + batch], masks[i : i + batch]
                done, _ = model.sample(x * m, m, n_samples, generator=gen)
                rows.append((border_agreement(done, x, m), int(border_pixels(m)[0].sum())))
            total = sum(w for _, w in rows)
            for key in ("border_step", "border_step_truth", "border_l1"):
                out[f"{key}_{name}"] = sum(r[key] * w for r, w in rows) / max(total, 1)
    return out


def probability_figure(model, image, mask, out: Path, *, seed: int) -> None:
    """Fig. 11: observed, expected-intensity maps as sampling progresses, completion, ground truth."""
    import numpy as np
    import torch
    from PIL import Image

    from generative.pixel_constrained import pixel_probability_maps

    fractions = (0.0, 0.25, 0.5, 0.75)
    maps, final = pixel_probability_maps(model, image * mask, mask, fractions=fractions,
                                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
    shown = torch.where(mask.bool(), image, torch.full_like(image, 0.5))
    tiles = [shown[0, 0], *[maps[k, 0, 0] for k in range(len(fractions))], final[0, 0], image[0, 0]]
    pad = torch.ones(image.shape[-2], 2)
    row = torch.cat([t for tile in tiles for t in (tile.cpu(), pad)][:-1], dim=1)
    pixels = (row.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((pixels.shape[1] * 3, pixels.shape[0] * 3), Image.NEAREST).save(out)


def print_speed(s: dict, size: int) -> None:
    print(f"speed, 10 completions of one {size}x{size} phantom, {s['missing_frac']:.0%} missing:")
    print("| method | seconds for 10 completions |\n|---|---|")
    print(f"| fast (incremental, conditioning once, observed skipped) | {s['fast_seconds_10']:.1f} |")
    timed, slow = s["raster_pixels_timed"], s["raster_seconds_10_extrapolated"]
    print(f"| straightforward (full network per pixel; {timed} px timed) | {slow:.1f} |")
    print(f"speed-up {s['speedup']:.0f}x; first pixels identical: {s['first_pixels_identical']}\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, help="a conditional-pixelcnn checkpoint to compare")
    parser.add_argument("--n-images", type=int, default=12)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--raster-positions", type=int, default=10)
    parser.add_argument("--skip-speed", action="store_true", help="only the likelihood/border figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args(argv)

    import torch

    from datasets import open_dataset
    from generative.family import load_family_model
    from generative.pixel_constrained import FAMILY

    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_family_model(args.checkpoint, FAMILY)
    size = model.image_size
    ds = open_dataset("chestxray", split="test", size=size, n=args.n_images, seed=args.seed)
    images, _ = ds.tensors()
    result: dict = {
        "checkpoint": str(args.checkpoint),
        "sha256": meta.get("sha256"),
        "trained_steps": meta.get("step"),
        "levels": model.config.levels,
        "n_images": len(images),
        "n_samples": args.n_samples,
        "threads": torch.get_num_threads(),
        "data": ds.describe(),
        "speed": None
        if args.skip_speed
        else speed(model, images[:1], raster_positions=args.raster_positions, seed=args.seed),
        "models": {
            meta.get("sampler", "pixel-constrained"): likelihood_figures(
                model, images, n_samples=args.n_samples, seed=args.seed
            )
        },
    }
    if args.baseline:
        base, base_meta = load_family_model(args.baseline, FAMILY)
        result["baseline_checkpoint"] = str(args.baseline)
        result["models"][base_meta.get("sampler", "conditional-pixelcnn")] = likelihood_figures(
            base, images, n_samples=args.n_samples, seed=args.seed
        )
    if args.figure:
        from datasets.masks import centre_square_masks

        probability_figure(model, images[:1], centre_square_masks(1, size), args.figure, seed=args.seed)

    if result["speed"]:
        print_speed(result["speed"], size)
    keys = sorted(next(iter(result["models"].values())))
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in result["models"].items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
