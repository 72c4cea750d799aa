"""Phantom generation speed: 1,000 phantoms of 64x64 (target: under 10 s on 2 CPU cores).

Compares against a straightforward reference in the same run (one image at a time, i.e. the
vectorised generator called with blocks of 1), since absolute times drift on shared machines.

    .venv/bin/python benchmarks/phantoms.py [--n 1000] [--size 64] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-n", type=int, default=32, help="images for the one-at-a-time reference")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from datasets.phantoms import _Phantoms, _single_thread, generate_phantoms

    generate_phantoms(8, args.size)  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    batch = generate_phantoms(args.n, args.size, seed=0)
    batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    for i in range(args.reference_n):
        with torch.inference_mode(), _single_thread(args.size):
            _Phantoms(1, args.size, torch.Generator().manual_seed(i), 0.5).render()
    one_by_one = (time.perf_counter() - t0) / args.reference_n * args.n

    rows = [
        ("vectorised blocks of 64", batched, args.n / batched),
        ("one image at a time (extrapolated)", one_by_one, args.n / one_by_one),
    ]
    print(f"{args.n} phantoms of {args.size}x{args.size}, {args.threads} thread(s)")
    print(f"{'method':38s} {'seconds':>8s} {'img/s':>8s}")
    for name, sec, rate in rows:
        print(f"{name:38s} {sec:8.2f} {rate:8.1f}")
    print(f"speed-up {one_by_one / batched:.1f}x; target < 10 s: {'met' if batched < 10 else 'NOT met'}")
    print(f"positives {batch.labels[:, -1].mean():.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "n": args.n,
                    "size": args.size,
                    "threads": args.threads,
                    "seconds": batched,
                    "reference_seconds": one_by_one,
                    "images_per_second": args.n / batched,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
