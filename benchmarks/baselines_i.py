"""Baseline samplers I: context encoders, retrieval importance sampling, training-free fills.

    python benchmarks/baselines_i.py --index INDEX [--ce DIR_OR_STEMS] [--parts quality,ess] \\
        [--n-images 100] [--threads 1] [--json benchmarks/results/baselines_i.json]

``quality``: for every sampler of the issue, ``benchmarks/sampler_quality.py`` on held-out
phantoms (centre square and AIPO masks; deterministic samplers one completion, retrieval 8),
writing ``benchmarks/results/quality-NAME.json`` and ``generative/figures/grid-NAME.png``; the
table adds each trained sampler's training time and settings from its checkpoint. The ``mean``
image is built here from the index's own training images (the same 5,000 phantoms).

``ess``: the retrieval sampler's effective sample size by number of scans: ``k = 0..5`` scans of
16×16 patches at random positions of the 17×17 grid (``datasets.masks.grid_locations``), on
held-out phantoms; for the ``pca`` and ``prior`` proposals the Kish ESS of the N = 10 draws
(``Completions.info["ess"]``) and the number of distinct database images among them; the Kish ESS
of the exact posterior over the whole database (how many training images the posterior really
rests on) and the distinct images among N draws from it (the ``exact`` proposal, whose weights
are uniform: its ESS is N by construction).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
FIGURES = ROOT.parent / "generative" / "figures"
CE_NAMES = ("context-encoder", "context-encoder-adv", "context-encoder-wgan")
MASKS = "centre_square,aipo"


def quality(name: str, checkpoint: Path | None, n_images: int, threads: int, seed: int) -> dict:
    """``sampler_quality.py`` for one sampler (its JSON and grid written beside the others)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from sampler_quality import main as sampler_quality

    from generative.registry import SPECS

    n_samples = 1 if SPECS[name].deterministic else 8
    argv = ["--sampler", name, "--masks", MASKS, "--n-images", str(n_images), "--n-samples", str(n_samples)]
    argv += ["--seed", str(seed), "--threads", str(threads), "--preset", "cpu"]
    argv += ["--json", str(RESULTS / f"quality-{name}.json"), "--grid", str(FIGURES / f"grid-{name}.png")]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    return sampler_quality(argv)


def training_record(checkpoint: Path | None) -> dict:
    """Steps, seconds and the config a checkpoint was trained with (empty for files not trained)."""
    if checkpoint is None:
        return {}
    from boed.runtime.checkpoints import read_meta

    meta = read_meta(checkpoint)
    t = meta.get("training", {})
    keys = (
        "loss",
        "lr",
        "lr_d",
        "overlap",
        "overlap_weight",
        "n_critic",
        "rec_weight",
        "batch_size",
        "masks",
    )
    config = {k: meta.get("config", {}).get(k) for k in keys}
    return (
        {
            "steps": t.get("step"),
            "seconds": t.get("seconds"),
            "images_seen": t.get("images_seen"),
            "command": t.get("command"),
            "config": config,
            "val": meta.get("metrics"),
        }
        if t
        else {"built": meta.get("config")}
    )


def ess_by_scans(index: Path, n_images: int, seed: int, n: int = 10, max_scans: int = 5) -> dict:
    """The ``ess`` part of the module docstring; means over ``n_images`` held-out phantoms."""
    import torch

    from boed.config import get_preset
    from datasets import open_dataset
    from datasets.masks import grid_locations, patch_masks
    from generative.registry import build_sampler
    from generative.retrieval import kish_ess

    preset = get_preset("cpu")
    size, patch, grid = preset.image_size, preset.patch_size, preset.grid
    images, _ = open_dataset("chestxray", split="test", size=size, n=n_images, seed=seed).tensors()
    locations = grid_locations(size, patch, grid)
    samplers = {p: build_sampler("retrieval", index, proposal=p) for p in ("pca", "prior")}
    exact = build_sampler("retrieval", index, proposal="exact")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(max_scans + 1):
        row: dict = {"scans": k}
        acc: dict[str, list[float]] = {}
        for i in range(len(images)):
            pick = torch.randperm(len(locations), generator=g)[:k]
            if k:
                mask = patch_masks(locations[pick], size, patch).amax(0, keepdim=True)
            else:
                mask = torch.zeros(1, 1, size, size)
            x = images[i : i + 1] * mask
            # the exact posterior over the database (one pass over every entry and shift): its
            # Kish ESS, and the "exact" proposal's draws from it
            t0 = time.perf_counter()
            log_post = exact._log_proposal(x, mask)  # (M, 1)
            draws = torch.multinomial(log_post[:, 0].exp().float(), n, replacement=True, generator=g)
            acc.setdefault("exact_seconds", []).append(time.perf_counter() - t0)
            acc.setdefault("posterior_ess", []).append(float(kish_ess(log_post)[0]))
            acc.setdefault("exact_distinct", []).append(float(len(torch.unique(draws))))
            for p, s in samplers.items():
                t0 = time.perf_counter()
                out = s.sample(x, mask, n, generator=torch.Generator().manual_seed(seed + i))
                acc.setdefault(f"{p}_seconds", []).append(time.perf_counter() - t0)
                acc.setdefault(f"{p}_ess", []).append(float(out.info["ess"][0]))
                acc.setdefault(f"{p}_distinct", []).append(float(out.info["distinct"][0]))
        for key, values in acc.items():
            row[key] = statistics.fmean(values)
            if key.endswith("_ess"):
                row[key.replace("_ess", "_ess_median")] = statistics.median(values)
        rows.append(row)
    return {
        "index": str(index),
        "n_images": len(images),
        "n": n,
        "noise_std": exact.noise_std,
        "shift": exact.shift,
        "database": len(exact),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--index", type=Path, required=True, help="retrieval index (boed build-retrieval-index)"
    )
    parser.add_argument("--ce", type=Path, help="folder holding ce-l2, ce-adv, ce-wgan checkpoints")
    parser.add_argument("--parts", default="quality,ess")
    parser.add_argument("--samplers", default=",".join((*CE_NAMES, "retrieval", "harmonic", "tv", "mean")))
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--ess-images", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS / "baselines_i.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    result: dict = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if "quality" in parts:
        stems = {
            "context-encoder": "ce-l2",
            "context-encoder-adv": "ce-adv",
            "context-encoder-wgan": "ce-wgan",
        }
        table = result.setdefault("quality", {})
        for name in args.samplers.split(","):
            if name in stems:
                if args.ce is None:
                    continue
                ckpt = args.ce / stems[name]
            elif name == "retrieval":
                ckpt = args.index
            elif name == "mean":
                from boed.runtime.checkpoints import load_checkpoint
                from generative.fills import build_mean_image

                idx = load_checkpoint(args.index, kind="sampler")
                ckpt = args.index.with_name("mean-phantom-cpu")  # an artifact beside the index
                build_mean_image(
                    idx.tensors["images"].float(),
                    ckpt,
                    data=idx.meta["data"],
                    trained_on=idx.meta["trained_on"],
                )
            else:
                ckpt = None
            t0 = time.perf_counter()
            q = quality(name, ckpt, args.n_images, args.threads, args.seed)
            table[name] = {
                "training": training_record(ckpt),
                "seconds_per_10": q["seconds_per_10"],
                "n_samples": q["n_samples"],
                "eval_seconds": time.perf_counter() - t0,
                "masks": {
                    m: {
                        k: q["masks"][m][k]
                        for k in ("mse", "maem", "psnr", "ssim", "l1", "mse_best", "diversity_l1")
                    }
                    | {k: v for k, v in q["masks"][m].items() if k.startswith("info_")}
                    for m in q["masks"]
                },
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
    if "ess" in parts:
        result["ess_by_scans"] = ess_by_scans(args.index, args.ess_images, args.seed)
        args.json.write_text(json.dumps(result, indent=1))
    print_tables(result)
    return result


def print_tables(result: dict) -> None:
    """The Markdown tables of the README."""
    if "quality" in result:
        print("| sampler | mask | L2 (MSE missing) | MAEM | PSNR | SSIM | s / 10 completions | training |")
        print("|---|---|---|---|---|---|---|---|")
        for name, row in result["quality"].items():
            t = row["training"]
            trained = f"{t['steps']} steps, {t['seconds'] / 60:.1f} min" if t.get("steps") else "none"
            for m, v in row["masks"].items():
                print(
                    f"| {name} | {m} | {v['mse']:.4f} | {v['maem']:.3f} | {v['psnr']:.2f} | "
                    f"{v['ssim']:.3f} | {row['seconds_per_10']:.3f} | {trained} |"
                )
    if "ess_by_scans" in result:
        e = result["ess_by_scans"]
        print(
            f"\nretrieval ESS of N = {e['n']} draws, {e['database']} database images, noise std "
            f"{e['noise_std']}, shift {e['shift']}, {e['n_images']} held-out phantoms"
        )
        print(
            "| scans | posterior ESS (database) | pca ESS | pca distinct | prior ESS | prior distinct "
            "| exact distinct |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in e["rows"]:
            print(
                f"| {r['scans']} | {r['posterior_ess']:.1f} | {r['pca_ess']:.2f} | {r['pca_distinct']:.1f} | "
                f"{r['prior_ess']:.2f} | {r['prior_distinct']:.1f} | {r['exact_distinct']:.1f} |"
            )


if __name__ == "__main__":
    main()
