"""Speed of the AIPO sampler: training throughput, latency of 10 completions, paper-preset numbers.

Run by hand (never a pass/fail test):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sampler_speed.py [--threads 2] [--repeats 20]
        [--paper] [--device cpu|cuda] [--json FILE]

Rows:
* ``train img/s``: AIPO training steps (``vae+aipo`` objective, forward + backward + AdamW) at the
  ``cpu`` preset and its batch size.
* ``sample_batched_ms`` (n = 10): ``sampler.sample(observed, mask, n=10)`` for one 64×64 image: the partial
  encoder once, its activations expanded 10 times, one decoder pass over 10 samples (median of
  ``--repeats``); target ≤ 100 ms on 2 cores.
* ``sample_reference_ms``: the straightforward way, 10 separate calls with n = 1 (partial encoder
  run 10 times, 10 decoder passes); the ratio is the speed-up of batching.
* ``--paper``: the same two sampling rows and one training step at the ``paper`` preset (the
  VD-VAE FFHQ-256 architecture, 256×256): on CPU 2 completions, one run each; on ``--device cuda``
  10 completions, 5 runs.

Absolute times drift on shared machines; the ratios in the same run are the comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from generative.aipo import AIPO, AIPOSampler
from generative.config import get_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_for(preset: str, device: torch.device, shipped: bool) -> AIPO:
    if shipped and preset == "cpu":
        try:
            from generative.registry import build_sampler

            return build_sampler("aipo", device=str(device)).model
        except Exception:  # noqa: BLE001 - no shipped checkpoint yet: time an untrained model
            pass
    torch.manual_seed(0)
    return AIPO(get_config(preset)).to(device, memory_format=torch.channels_last).eval()


def bench_preset(
    preset: str,
    device: torch.device,
    repeats: int,
    train_steps: int,
    batch: int | None,
    n: int = 10,
    warmup: int = 1,
) -> dict:
    model = model_for(preset, device, shipped=True)
    config = model.config
    size = config.image_size
    sampler = AIPOSampler(model, name="aipo")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, size, size, generator=g).to(device)
    m = torch.zeros_like(x)
    q = size // 4
    m[..., q : 2 * q, q : 2 * q] = 1
    batched = timed(lambda: sampler.sample(x * m, m, n, generator=g), repeats, device, warmup)
    reference = timed(
        lambda: [sampler.sample(x * m, m, 1, generator=g) for _ in range(n)], repeats, device, warmup
    )
    # training throughput on a copy in train mode
    train_model = AIPO(config).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    bs = batch or config.batch_size
    xb = torch.rand(bs, 1, size, size, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    mb = (
        (torch.rand(bs, 1, size, size, generator=g) > 0.7)
        .float()
        .to(device)
        .contiguous(memory_format=torch.channels_last)
    )

    def step():
        opt.zero_grad(set_to_none=True)
        train_model.losses(xb, mb, "vae+aipo" if preset != "paper" else "aipo")["loss"].backward()
        opt.step()

    step_s = timed(step, train_steps, device, warmup)
    return {
        "preset": preset,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "params_million": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "n_completions": n,
        "sample_batched_ms": round(1000 * batched, 1),
        "sample_reference_ms": round(1000 * reference, 1),
        "batching_speedup": round(reference / batched, 2),
        "train_batch": bs,
        "train_step_s": round(step_s, 3),
        "train_img_per_s": round(bs / step_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--paper", action="store_true", help="also the paper preset (slow on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench_preset("cpu", device, args.repeats, args.train_steps, None)]
    print(" | ".join(f"{k}={v}" for k, v in rows[0].items()), flush=True)  # before the slow part
    if args.paper:
        cpu = device.type == "cpu"  # on CPU: 2 completions, one timed run each, no warm-up
        reps = 1 if cpu else 5
        rows.append(bench_preset("paper", device, reps, reps, 1, n=2 if cpu else 10, warmup=0 if cpu else 1))
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
