"""GAN latent-search inpainting: the ablation of Vitoria et al. (2018) Tables 1–2, diversity, speed.

    python benchmarks/gan_inpainting.py --yeh CKPT --vitoria CKPT [--n-images 8] [--n-samples 2] \\
        [--masks centre_square,three_squares] [--iterations N] [--speed-iterations 1000] \\
        [--speed-samplers gan-yeh,wgan-vitoria] [--threads 1] [--out benchmarks/results] \\
        [--figures generative/figures]

On held-out phantoms (the ``test`` split, as ``benchmarks/sampler_quality.py``):

1. **Ablation** (``gan_ablation.json``): for each mask and each loss, Yeh (DCGAN, ``yeh``), Yeh +
   gradient loss (DCGAN, ``yeh+grad``, α 0.1, β 0.9, η 0.5: the best such row of Vitoria's Table 1)
   and Vitoria (WGAN-GP, ``vitoria``, α 0.1, β 0.9, η 0.5), one latent search per completion and
   the same completion scored without and with Poisson blending: MSE on the missing pixels, PSNR
   and SSIM of the whole image (:mod:`generative.metrics`, torchmetrics), and ``context_l1``, the
   mean |G(ẑ) − y| over the observed pixels before blending (how far the generator's image strays
   from the observation, i.e. what blending and pasting have to hide).
2. **Diversity** (``gan_diversity.json``): mean pairwise L1 between the completions of one input,
   plain restarts (a MAP search from n random starts) vs the Langevin variant.
3. **Speed** (``gan_speed.json``): seconds for one batched search of N = 10 completions of one 64×64
   image (``--speed-iterations``, early stopping off) vs the same as 10 separate searches in the
   same process, and their ratio.

Sample grids go to ``--figures`` (``gan_inpainting_<mask>.png``: per image truth, observation
(hole grey), then Yeh, Yeh + gradient, Vitoria, each blended). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROWS = (  # (label, sampler, loss)
    ("Yeh et al.", "gan-yeh", "yeh"),
    ("Yeh et al. + gradient loss", "gan-yeh", "yeh+grad"),
    ("Vitoria et al.", "wgan-vitoria", "vitoria"),
)


def search(sampler, x, m, n: int, seed: int):
    """Raw ``G(ẑ)`` ``(n, B, 1, S, S)`` and the per-draw info of one batched search (no paste, no blend)."""
    import torch

    blend, sampler.blend = sampler.blend, False
    try:
        with torch.enable_grad():
            out = sampler.complete(x * m, m, n, torch.Generator().manual_seed(seed))
    finally:
        sampler.blend = blend
    return out.images.detach(), out.info


def score(images, truth, mask) -> dict[str, float]:
    from generative.metrics import fidelity

    values = fidelity(images, truth, mask)
    return {k: float(values[k].mean()) for k in ("mse", "psnr", "ssim")}


def ablation(samplers, images, mask_names, *, n_samples, seed, iterations, batch=8):
    import torch

    from datasets.masks import MASKS
    from generative.family import paste_observed
    from generative.gan.poisson import poisson_blend

    results, grids = {}, {}
    for mask_name in mask_names:
        masks = MASKS[mask_name](len(images), images.shape[-1], generator=torch.Generator().manual_seed(seed))
        rows = {}
        for label, name, loss in ROWS:
            s = samplers[name]
            s.options = type(s.options)(
                **{**s.options.__dict__, "loss": loss, **({"iterations": iterations} if iterations else {})}
            )
            raws, infos, t0 = [], [], time.perf_counter()
            for i in range(0, len(images), batch):
                raw, info = search(s, images[i : i + batch], masks[i : i + batch], n_samples, seed + i)
                raws.append(raw)
                infos.append(info)
            seconds = time.perf_counter() - t0
            raw = torch.cat(raws, 1)
            info = {k: torch.cat([d[k] for d in infos], 1) for k in infos[0]}
            pasted = paste_observed(raw, images * masks, masks)
            blended = paste_observed(
                poisson_blend(raw, images * masks, masks).clamp(0, 1), images * masks, masks
            )
            rows[label] = {
                "sampler": name,
                "loss": loss,
                "iterations": s.options.iterations,
                "iterations_run_mean": float(info["iterations"].mean()),
                "context_l1_before_blending": float(info["context_l1"].mean()),
                "no_blending": score(pasted, images, masks),
                "blending": score(blended, images, masks),
                "seconds": seconds,
            }
            grids[(mask_name, label)] = blended[0]
        results[mask_name] = {"observed_frac": float(masks.mean()), "rows": rows}
        grids[(mask_name, "_obs")] = (images * masks + 0.5 * (1 - masks), images)
    return results, grids


def write_grids(grids, mask_names, figures: Path, k: int = 6) -> list[str]:
    import torch

    from generative.gan.family import save_grid

    paths = []
    for mask_name in mask_names:
        obs, truth = grids[(mask_name, "_obs")]
        cols = [truth, obs] + [grids[(mask_name, label)] for label, _, _ in ROWS]
        tiles = torch.stack([c[:k] for c in cols], 1).flatten(0, 1)  # per image: truth, obs, 3 methods
        path = figures / f"gan_inpainting_{mask_name}.png"
        save_grid(tiles, path, cols=len(cols))
        paths.append(str(path))
    return paths


def diversity(samplers, images, *, n_samples, seed, iterations, langevin):

    from datasets.masks import MASKS
    from generative.evaluation import pairwise_distance
    from generative.family import paste_observed

    masks = MASKS["centre_square"](len(images), images.shape[-1])
    out = {}
    for name, s in samplers.items():
        base = s.options
        row = {}
        for variant, noise in (("restarts", 0.0), ("langevin", langevin)):
            s.options = type(base)(
                **{**base.__dict__, "langevin": noise, **({"iterations": iterations} if iterations else {})}
            )
            raw, _ = search(s, images, masks, n_samples, seed)
            done = paste_observed(raw, images * masks, masks)
            hole = (1 - masks).bool()
            l1 = (done.unsqueeze(0) - done.unsqueeze(1)).abs()  # (n, n, B, 1, S, S)
            in_hole = (l1 * hole).sum((-1, -2, -3)) / hole.sum((-1, -2, -3))
            pairs = n_samples * (n_samples - 1)
            row[variant] = {
                "langevin": noise,
                "pairwise_l1_hole": float(in_hole.sum((0, 1)).mean() / pairs),
                "pairwise_l1_image": float(pairwise_distance(done)[0].mean()),
                **score(done, images, masks),
            }
        s.options = base
        out[name] = row
    return out


def speed(samplers, image, *, iterations, n=10, seed=0):
    import torch

    from datasets.masks import MASKS

    mask = MASKS["centre_square"](1, image.shape[-1])
    out = {}
    for name, s in samplers.items():
        base = s.options
        s.options = type(base)(**{**base.__dict__, "iterations": iterations, "patience": 0})
        search(s, image, mask, 2, seed)  # warm-up
        t0 = time.perf_counter()
        search(s, image, mask, n, seed)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in range(n):
            search(s, image, mask, 1, seed + r)
        separate = time.perf_counter() - t0
        s.options = base
        out[name] = {
            "n": n,
            "iterations": iterations,
            "batched_s": batched,
            "separate_s": separate,
            "ratio": separate / batched,
            "threads": torch.get_num_threads(),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--yeh", type=Path, required=True, help="gan-yeh checkpoint")
    parser.add_argument("--vitoria", type=Path, required=True, help="wgan-vitoria checkpoint")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--masks", default="centre_square,three_squares")
    parser.add_argument("--n-images", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=2)
    parser.add_argument(
        "--iterations", type=int, help="search iterations (default: the papers' 1,500 / 1,000)"
    )
    parser.add_argument("--diversity-samples", type=int, default=4)
    parser.add_argument("--langevin", type=float, default=0.1)
    parser.add_argument("--speed-iterations", type=int, default=1000)
    parser.add_argument("--speed-samplers", default="gan-yeh,wgan-vitoria")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: ablation,diversity,speed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--figures", type=Path, default=Path("generative/figures"))
    args = parser.parse_args(argv)

    import torch

    from datasets import open_dataset
    from generative.registry import build_sampler

    if args.threads:
        torch.set_num_threads(args.threads)
    samplers = {
        "gan-yeh": build_sampler("gan-yeh", args.yeh, preset=args.preset),
        "wgan-vitoria": build_sampler("wgan-vitoria", args.vitoria, preset=args.preset),
    }
    ds = open_dataset(
        "chestxray", split="test", size=samplers["gan-yeh"].image_size, n=args.n_images, seed=args.seed
    )
    images, _ = ds.tensors()
    skip = set(filter(None, args.skip.split(",")))
    common = {
        "checkpoints": {
            k: {"path": str(p), "sha256": samplers[k].sha256}
            for k, p in (("gan-yeh", args.yeh), ("wgan-vitoria", args.vitoria))
        },
        "trained_steps": {k: s.meta.get("training", {}).get("step") for k, s in samplers.items()},
        "n_images": len(images),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "data": ds.describe(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    masks = args.masks.split(",")
    if "ablation" not in skip:
        table, grids = ablation(
            samplers, images, masks, n_samples=args.n_samples, seed=args.seed, iterations=args.iterations
        )
        result["ablation"] = common | {
            "n_samples": args.n_samples,
            "masks": table,
            "grids": write_grids(grids, masks, args.figures),
        }
        (args.out / "gan_ablation.json").write_text(json.dumps(result["ablation"], indent=1))
        for mask_name, block in table.items():
            print(
                f"\n{mask_name} (observed {block['observed_frac']:.2f}), "
                f"{len(images)} test phantoms × {args.n_samples}"
            )
            print(
                "| loss | blending | MSE (missing) | PSNR | SSIM | stray L1 before blending "
                "| iterations run |"
            )
            print("|---|---|---|---|---|---|---|")
            for label, row in block["rows"].items():
                for key, word in (("no_blending", "no"), ("blending", "yes")):
                    r = row[key]
                    print(
                        f"| {label} | {word} | {r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                        f"{row['context_l1_before_blending']:.4f} | {row['iterations_run_mean']:.0f} |"
                    )
    if "diversity" not in skip:
        div = diversity(
            samplers,
            images[: min(4, len(images))],
            n_samples=args.diversity_samples,
            seed=args.seed,
            iterations=args.iterations,
            langevin=args.langevin,
        )
        result["diversity"] = common | {"n_samples": args.diversity_samples, "samplers": div}
        (args.out / "gan_diversity.json").write_text(json.dumps(result["diversity"], indent=1))
        print(
            "\n| sampler | variant | pairwise L1 in the hole | MSE | PSNR | SSIM |\n|---|---|---|---|---|---|"
        )
        for name, rows in div.items():
            for variant, r in rows.items():
                print(
                    f"| {name} | {variant} (noise {r['langevin']}) | {r['pairwise_l1_hole']:.4f} | "
                    f"{r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} |"
                )
    if "speed" not in skip:
        chosen = {k: samplers[k] for k in args.speed_samplers.split(",")}
        sp = speed(chosen, images[:1], iterations=args.speed_iterations)
        result["speed"] = common | {"samplers": sp}
        (args.out / "gan_speed.json").write_text(json.dumps(result["speed"], indent=1))
        print(
            "\n| sampler | N | iterations | batched (s) | 10 separate (s) | ratio |\n"
            "|---|---|---|---|---|---|"
        )
        for name, r in sp.items():
            print(
                f"| {name} | {r['n']} | {r['iterations']} | {r['batched_s']:.1f} | "
                f"{r['separate_s']:.1f} | {r['ratio']:.2f} |"
            )
    return result


if __name__ == "__main__":
    main()
