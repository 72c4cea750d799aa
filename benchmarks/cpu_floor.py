"""Benchmark: what this CPU can do for a scan decision, and whether bf16 is a way below fp32.

Measures, on ``--threads`` threads:

* the matrix-multiply rate (2048 x 2048, best of ``--repeats``) in float32 and bfloat16: the
  practical peak of the cores (AVX-512 on AMD Zen 5 runs bf16 dot products at about 4x float32);
* the FLOPs of one input of the shipped ``cpu``-preset classifier (``torch.utils.flop_counter``),
  so the **floor** of a decision's classifier work, ``inputs x FLOPs / matmul rate``, in each
  precision (a DenseNet's small convolutions reach a fraction of a matmul's rate: the floor is
  optimistic);
* the classifier's throughput on the decision's 2,890-input batch shape for eager float32 (the
  reference), eager under bf16 autocast, and ONNX Runtime float32, methods taking turns;
* how often bf16 and ONNX Runtime choose eager float32's location on ``--decisions`` fixed
  decisions (:func:`classifiers.runtime.decision_set` at the 17 x 17 grid with N = 10), the
  check a CPU runtime must pass at >= 99 %.

Writes ``--json`` (default ``benchmarks/results/cpu_floor.json``).

    .venv/bin/python benchmarks/cpu_floor.py [--threads 2] [--decisions 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

DECISION_INPUTS = 2890  # 289 candidates x N = 10 completions at the cpu preset


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 10, repeats: int = 3) -> float:
    """Best GFLOP/s of ``reps`` n x n matrix products in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def input_flops(classifier) -> int:
    """FLOPs of one partial view through the classifier's network."""
    from torch.utils.flop_counter import FlopCounterMode

    size = classifier.image_size
    x, m = torch.zeros(1, 1, size, size), torch.ones(1, 1, size, size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        classifier.model(x, m)
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decisions", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cpu_floor.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from classifiers import load_classifier
    from classifiers.runtime import decision_set, location_agreement, with_runtime

    load = os.getloadavg()
    rates = {"fp32": matmul_rate(torch.float32, repeats=args.repeats)}
    rates["bf16"] = matmul_rate(torch.bfloat16, repeats=args.repeats)
    clf = load_classifier(None, preset="cpu")
    flops = input_flops(clf)
    work = DECISION_INPUTS * flops
    runtimes = {
        "eager fp32 (reference)": clf,
        "eager bf16 autocast": with_runtime(clf, "eager", precision="bf16"),
        "onnx fp32": with_runtime(clf, "onnx"),
    }
    g = torch.Generator().manual_seed(0)
    size = clf.image_size
    m = (torch.rand(DECISION_INPUTS, 1, size, size, generator=g) > 0.5).float()
    x = torch.rand(DECISION_INPUTS, 1, size, size, generator=g) * m
    for r in runtimes.values():
        r.predict(x[:256], m[:256])  # warm-up (ONNX session, oneDNN primitives)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, r in runtimes.items():
            t0 = time.perf_counter()
            r.predict(x, m)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    reference = clf.predict(x, m)
    throughput = {
        name: {
            "images_per_s": DECISION_INPUTS / best[name],
            "decision_classifier_s": best[name],
            "x_eager": best["eager fp32 (reference)"] / best[name],
            "max_abs_prob_difference": float((r.predict(x, m) - reference).abs().max()),
        }
        for name, r in runtimes.items()
    }
    candidates, decisions = decision_set(args.decisions, grid=17, n_completions=10)
    agreement = {
        name: location_agreement(clf, r, candidates, decisions)
        for name, r in runtimes.items()
        if r is not clf
    }
    result = {
        "what": "CPU floor of a cpu-preset decision and the bf16 / ONNX runtimes (benchmarks/cpu_floor.py)",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average_start": load,
            "load_average_end": os.getloadavg(),
        },
        "matmul_gflops": rates,
        "classifier_mflop_per_input": flops / 1e6,
        "decision_inputs": DECISION_INPUTS,
        "decision_gflop": work / 1e9,
        "floor_s": {k: work / (v * 1e9) for k, v in rates.items()},
        "throughput": throughput,
        "location_agreement_with_eager_fp32": agreement,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    fp32, bf16 = rates["fp32"], rates["bf16"]
    print(f"matmul: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s ({args.threads} threads)")
    print(f"decision: {DECISION_INPUTS} inputs x {flops / 1e6:.1f} MFLOP = {work / 1e9:.1f} GFLOP; floor "
          f"fp32 {result['floor_s']['fp32']:.3f} s, bf16 {result['floor_s']['bf16']:.3f} s")  # fmt: skip
    for name, t in throughput.items():
        print(f"{name:>24}: {t['images_per_s']:,.0f} img/s, {t['decision_classifier_s']:.3f} s per decision, "
              f"x{t['x_eager']:.2f} eager, max |dp| {t['max_abs_prob_difference']:.1e}")  # fmt: skip
    for name, a in agreement.items():
        share, n = a["agreement"], a["decisions"]
        print(f"{name:>24}: same location as eager fp32 in {share:.1%} of {n} decisions")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
