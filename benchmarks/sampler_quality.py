"""Fidelity, diversity and speed of one sampler on held-out phantoms: the figures every sampler reports.

    python benchmarks/sampler_quality.py --sampler aipo [--checkpoint CKPT] [--preset cpu] \\
        [--masks centre_square,three_squares,aipo] [--n-images 100] [--n-samples 8] \\
        [--seed 0] [--threads 1] [--json OUT.json] [--grid OUT.png]

For each mask distribution (``datasets.masks.MASKS``): L1 / MSE / MAEM on the missing pixels and
PSNR / SSIM of the whole image, mean (weighted by the log-weights of a weighted sampler) and
best-of-n (:mod:`generative.metrics`), the mean pairwise
L1 distance between the completions of one input (:func:`generative.evaluation.pairwise_distance`),
the mean of every per-draw diagnostic the sampler reports in ``Completions.info`` (e.g. the
log-likelihood of autoregressive samplers, the effective sample size of weighted ones), and the
median seconds for 10 completions of one image with the peak memory of a call
(:func:`boed.evaluation.engine.measure_cost`, shared with ``boed evaluate-samplers``, which
compares every sampler at once with realism, calibration and BOED usefulness beside these
figures). Same images, masks and seeds for every sampler, so
tables of different samplers compare. ``--grid`` writes the Fig. 8-style grid of two test images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def evaluate_quality(sampler, images, mask_names, *, n_samples: int, seed: int, batch: int = 8) -> dict:
    """The metrics of the module docstring for ``sampler`` on ``images`` ``(N, 1, S, S)``."""
    import torch

    from datasets.masks import MASKS
    from generative.evaluation import pairwise_distance
    from generative.metrics import fidelity, summarise

    n, size = len(images), images.shape[-1]
    out: dict = {}
    for name in mask_names:
        masks = MASKS[name](n, size, generator=torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed)
        values: dict[str, list] = {}
        weights: list = []
        info: dict[str, list] = {}
        diversity = []
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            x, m = images[i : i + batch], masks[i : i + batch]
            done = sampler.sample(x * m, m, n_samples, generator=gen)
            for k, v in fidelity(done.images, x, m).items():
                values.setdefault(k, []).append(v)
            if done.log_weights is not None:
                weights.append(done.log_weights)
            if n_samples > 1:
                diversity.append(pairwise_distance(done.images)[0])
            for k, v in (done.info or {}).items():
                info.setdefault(k, []).append(v.float().flatten())
        log_w = torch.cat(weights, 1) if weights else None  # weighted samplers: their own estimate
        row = summarise({k: torch.cat(v, 1) for k, v in values.items()}, log_w)
        row["observed_frac"] = float(masks.mean())
        row["diversity_l1"] = float(torch.cat(diversity).mean()) if diversity else 0.0
        row |= {f"info_{k}": float(torch.cat(v).mean()) for k, v in info.items()}
        row["seconds"] = time.perf_counter() - t0
        out[name] = row
    from boed.evaluation.engine import measure_cost  # the one cost measurement (boed evaluate-samplers)

    m = MASKS[mask_names[0]](1, size, generator=torch.Generator().manual_seed(seed))
    cost = measure_cost(sampler, images[:1], m, n=10, repeats=3)
    return {"masks": out, "seconds_per_10": cost["seconds_per_10"], "peak_mib": cost["peak_mib"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sampler", required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--masks", default="centre_square,three_squares,aipo")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--grid", type=Path)
    args = parser.parse_args(argv)

    import torch

    from datasets import open_dataset
    from generative.evaluation import figure_8
    from generative.registry import build_sampler

    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = build_sampler(args.sampler, args.checkpoint, preset=args.preset)
    ds = open_dataset("chestxray", split="test", size=sampler.image_size, n=args.n_images, seed=args.seed)
    images, _ = ds.tensors()
    result = {
        "sampler": args.sampler,
        "checkpoint": str(args.checkpoint or "shipped"),
        "sha256": getattr(sampler, "sha256", None),
        "n_images": len(images),
        "n_samples": args.n_samples,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "data": ds.describe(),
    }
    result |= evaluate_quality(
        sampler, images, args.masks.split(","), n_samples=args.n_samples, seed=args.seed
    )
    keys = (
        "l1",
        "l1_best",
        "mse",
        "mse_best",
        "maem",
        "psnr",
        "psnr_best",
        "ssim",
        "ssim_best",
        "diversity_l1",
    )
    print(f"{args.sampler}: {len(images)} test phantoms, {args.n_samples} completions each")
    print("| masks | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in result["masks"].items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    print(f"seconds per 10 completions of one image: {result['seconds_per_10']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.grid:
        figure_8(sampler, images[:2], args.grid, seed=args.seed)
    return result


if __name__ == "__main__":
    main()
