"""Throughput of ``PartialClassifier.predict`` (the hot path of the BOED controller), in images/s.

One decision of the controller classifies (candidates x completions) = 17 x 17 x 10 = 2,890
images. This script times ``predict`` on such a batch at the ``cpu`` preset (64 px, the shipped
checkpoint when present) and on fewer images at the ``paper`` preset (DenseNet-121, 256 px,
random weights: speed does not depend on them), and compares, in the same run, against a
straightforward reference: the plain ``nn.Module`` forward on the whole batch at once (no
chunking, default memory format, ``torch.no_grad``), and batch-size-1 calls. Absolute figures
drift on shared machines; the ratios are the point.

    .venv/bin/python benchmarks/classifier_throughput.py [--threads 2] [--device cpu|cuda]
        [--repeats 5] [--json runs/benchmarks/classifier_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, n_images: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median images/s of each ``fns[name]()`` over ``repeats`` rounds, the methods taking turns.

    Taking turns (after one warm-up call each) exposes every method to the same background load,
    which on a shared machine drifts by several times within a minute.
    """
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            rates[name].append(n_images[name] / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def bench_preset(
    preset: str, n: int, device: torch.device, repeats: int, chunk_sizes: list[int]
) -> list[dict]:
    from classifiers.avp_cnn import AVPCNN
    from classifiers.config import classifier_preset
    from classifiers.partial import PartialClassifier, load_classifier, shipped_checkpoint

    source = "random weights"
    if shipped_checkpoint(preset).with_name(f"phantom-{preset}.json").exists():
        clf = load_classifier(preset=preset, device=device)
        source = f"shipped {clf.name}"
    else:
        torch.manual_seed(0)
        clf = PartialClassifier(AVPCNN(classifier_preset(preset)), device=device)
    size = clf.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g).to(device)
    m = (torch.rand(n, 1, size, size, generator=g) > 0.7).float().to(device)

    # the reference: a plain module in default memory format, whole batch at once
    reference = AVPCNN(clf.config).to(device).eval()
    reference.load_state_dict(clf.model.state_dict())

    def plain():
        with torch.no_grad():
            return torch.sigmoid(reference(x, m))

    n1 = min(n, 32)

    def batch_one():
        with torch.no_grad():
            for i in range(n1):
                reference(x[i : i + 1], m[i : i + 1])

    def predict_with(chunk):
        def run():
            clf.chunk_size = chunk
            return clf.predict(x, m)

        return run

    names = {"plain forward, whole batch (reference)": (plain, n), "plain forward, batch 1": (batch_one, n1)}
    names |= {f"PartialClassifier.predict (chunk {c})": (predict_with(c), n) for c in chunk_sizes}
    rates = interleaved(
        {k: v[0] for k, v in names.items()}, {k: v[1] for k, v in names.items()}, device, repeats
    )
    ref_rate = rates["plain forward, whole batch (reference)"]
    rows = [{"preset": preset, "method": k, "images": names[k][1], "img_per_s": r} for k, r in rates.items()]
    # consistency: the optimised path gives the reference's probabilities
    with torch.no_grad():
        diff = float(
            (clf.predict(x[:32], m[:32]) - torch.sigmoid(reference(x[:32], m[:32]) / clf.temperature))
            .abs()
            .max()
        )
    for row in rows:
        row |= {
            "ratio_vs_reference": row["img_per_s"] / ref_rate,
            "weights": source,
            "image_size": size,
            "max_abs_diff_vs_reference": diff,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-images", type=int, default=17 * 17 * 10)
    parser.add_argument("--paper-images", type=int, default=32)
    parser.add_argument("--chunks", default="256,512")
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("runs/benchmarks/classifier_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chunks = [int(c) for c in args.chunks.split(",")]
    rows = bench_preset("cpu", args.cpu_images, device, args.repeats, chunks)
    if not args.skip_paper:
        rows += bench_preset("paper", args.paper_images, device, args.repeats, [32])

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"classifier predict throughput ({device}, {args.threads} threads)")
    for col in ("preset", "method", "images", "img/s", "x reference"):
        table.add_column(col, justify="left" if col in ("preset", "method") else "right")
    for r in rows:
        table.add_row(
            r["preset"],
            r["method"],
            str(r["images"]),
            f"{r['img_per_s']:.0f}",
            f"{r['ratio_vs_reference']:.2f}",
        )
    Console().print(table)
    record = {
        "benchmark": "classifier_throughput",
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
