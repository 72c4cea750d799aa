"""The diffusion samplers beside AIPO on held-out phantoms: fidelity, Any accuracy, speed, RePaint settings.

    python benchmarks/diffusion.py [--diffusion CKPT] [--repaint CKPT] [--aipo CKPT] \\
        [--n-images 16] [--n-samples 10] [--acc-images 16] [--acc-samples 4] [--seed 0] \\
        [--threads 1] [--masks aipo,centre_square] [--simulate NAME=DIR ...] \\
        [--json benchmarks/results/diffusion.json] [--figures generative/figures]

For every sampler (``diffusion`` at its default DDIM steps, ``repaint`` at its default setting,
``aipo``), on the same test phantoms, masks and seeds:

* L1 / PSNR / SSIM mean and best-of-``n_samples``, diversity (``benchmarks/sampler_quality.py``'s
  :func:`evaluate_quality`);
* the shipped classifier's Any accuracy on completions at 0–5 observed squares
  (:func:`generative.evaluation.evaluate`, the classifier as ``boed evaluate-sampler`` uses it);
* seconds per 10 completions of one image: DDIM at 25 and 50 steps, RePaint at a few
  (steps, jump length, resamplings) with their network calls per completion, and L1 of each
  RePaint setting on the first mask distribution (which setting is useful at ≤ 100 calls);
* ``--simulate NAME=DIR``: the ``summary.csv`` of a ``boed simulate`` run, copied into the JSON;
* ``--figures DIR``: Fig. 8-style grids (:func:`generative.evaluation.figure_8`) of two test images.

Prints Markdown tables; writes everything to ``--json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

REPAINT_SETTINGS = [  # (steps, jump_length, jump_n_sample): all ≤ 100 network calls
    (25, 1, 1),
    (25, 5, 4),
]


def seconds_per_10(sampler, image, mask, repeats: int = 2) -> float:
    """Median seconds for 10 completions of one image (``image``, ``mask`` ``(1, 1, S, S)``)."""
    import torch

    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        sampler.sample(image * mask, mask, 10, generator=torch.Generator().manual_seed(r))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--diffusion", type=Path)
    parser.add_argument("--repaint", type=Path)
    parser.add_argument("--aipo", type=Path, help="AIPO checkpoint (default: the shipped one)")
    parser.add_argument("--samplers", default="diffusion,repaint,aipo")
    parser.add_argument("--masks", default="aipo,centre_square")
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=10)
    parser.add_argument("--acc-images", type=int, default=16)
    parser.add_argument("--acc-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-speed", action="store_true", help="skip the speed / RePaint settings table")
    parser.add_argument("--simulate", action="append", default=[], help="NAME=DIR of a boed simulate run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figures", type=Path)
    parser.add_argument("--grid-images", type=int, default=2)
    parser.add_argument("--grid-completions", type=int, default=5)
    parser.add_argument("--speed-repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from sampler_quality import evaluate_quality  # benchmarks/ is on sys.path when run as a script

    from cli.sampler import _classifier_any
    from datasets import open_dataset
    from datasets.masks import MASKS
    from generative.evaluation import evaluate, figure_8
    from generative.registry import build_sampler

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = {"diffusion": args.diffusion, "repaint": args.repaint, "aipo": args.aipo}
    names = args.samplers.split(",")
    ds = open_dataset(
        "chestxray", split="test", size=64, n=max(args.n_images, args.acc_images), seed=args.seed
    )
    images, labels = ds.tensors()
    any_fn, reason, classifier = _classifier_any(None, tuple(ds.labels), 64)
    masks = args.masks.split(",")
    result: dict = {
        "n_images": args.n_images,
        "n_samples": args.n_samples,
        "acc_images": args.acc_images,
        "acc_samples": args.acc_samples,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "data": ds.describe(),
        "classifier": classifier,
        "samplers": {},
    }
    for name in names:
        sampler = build_sampler(name, checkpoints[name])
        t0 = time.perf_counter()
        row = {
            "checkpoint": str(checkpoints[name] or "shipped"),
            "sha256": sampler.sha256,
            "network_calls": getattr(sampler, "network_calls", None),
        }
        row |= evaluate_quality(
            sampler, images[: args.n_images], masks, n_samples=args.n_samples, seed=args.seed
        )
        acc = evaluate(
            sampler,
            images[: args.acc_images],
            labels[: args.acc_images],
            n_samples=args.acc_samples,
            seed=args.seed,
            any_accuracy=any_fn,
            skip_reason=reason,
        )
        row["any_accuracy_truth"] = acc["any_accuracy_truth"]
        row["by_squares"] = [
            {k: r[k] for k in ("squares", "any_accuracy_completions", "diversity_l1", "mae_to_truth")}
            for r in acc["by_squares"]
        ]
        row["seconds_total"] = time.perf_counter() - t0
        result["samplers"][name] = row
        if args.figures and name != "aipo":  # AIPO's own grid is generative/figures' business
            figure_8(
                sampler,
                images[: args.grid_images],
                args.figures / f"fig8-{name}-phantom-cpu.png",
                n_completions=args.grid_completions,
                seed=args.seed,
            )
        print(f"{name}: done in {row['seconds_total']:.0f} s", flush=True)

    if not args.no_speed:
        x = images[:1]
        m = MASKS[masks[0]](1, 64, generator=torch.Generator().manual_seed(args.seed))
        speed: dict = {}
        if "diffusion" in names:
            for steps in (25, 50):
                s = build_sampler("diffusion", args.diffusion, steps=steps)
                speed[f"diffusion steps={steps}"] = {
                    "calls": steps,
                    "seconds_per_10": seconds_per_10(s, x, m),
                }
        if "repaint" in names:
            sub, sub_m = (
                images[: args.n_images // 2],
                MASKS[masks[0]](args.n_images // 2, 64, generator=torch.Generator().manual_seed(args.seed)),
            )
            from generative.metrics import l1_missing

            for steps, j, r in REPAINT_SETTINGS:
                s = build_sampler("repaint", args.repaint, steps=steps, jump_length=j, jump_n_sample=r)
                done = s.sample(
                    sub * sub_m, sub_m, 4, generator=torch.Generator().manual_seed(args.seed)
                ).images
                speed[f"repaint steps={steps} j={j} r={r}"] = {
                    "calls": s.network_calls,
                    "seconds_per_10": seconds_per_10(s, x, m, repeats=1),
                    "l1": float(l1_missing(done, sub, sub_m).mean()),
                }
        result["speed"] = speed

    for item in args.simulate:
        label, _, folder = item.partition("=")
        with open(Path(folder) / "summary.csv") as fh:
            result.setdefault("simulate", {})[label] = list(csv.DictReader(fh))

    keys = ("l1", "l1_best", "psnr", "psnr_best", "ssim", "ssim_best", "diversity_l1")
    print(f"\n{args.n_images} test phantoms, {args.n_samples} completions each (best-of-{args.n_samples})")
    print("| sampler | masks | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for name, row in result["samplers"].items():
        for mask_name, q in row["masks"].items():
            print(f"| {name} | {mask_name} | " + " | ".join(f"{q[k]:.4f}" for k in keys) + " |")
    print(f"\nAny accuracy on completions ({args.acc_images} images × {args.acc_samples} completions)")
    print("| sampler | truth | " + " | ".join(f"{k} sq" for k in range(6)) + " |")
    print("|---" * 8 + "|")
    for name, row in result["samplers"].items():
        accs = [r["any_accuracy_completions"] for r in row["by_squares"]]
        show = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {name} | {show(row['any_accuracy_truth'])} | " + " | ".join(show(v) for v in accs) + " |")
    if result.get("speed"):
        print("\n| setting | network calls | s per 10 completions | L1 (missing) |")
        print("|---|---|---|---|")
        for k, v in result["speed"].items():
            print(f"| {k} | {v['calls']} | {v['seconds_per_10']:.2f} | {v.get('l1', float('nan')):.4f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
