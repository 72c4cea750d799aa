"""Peak memory of a short classifier training vs dataset size: streaming DataLoader vs materialising.

Writes image folders of ``--sizes`` PNGs (256 px source, smooth synthetic radiograph-like images,
two binary label columns) to a temporary folder, then for each size runs, each in a fresh
subprocess, a short ``train_classifier`` at the ``cpu`` preset (64 px, ``--steps`` updates):

- ``stream``: the project's data path (:mod:`boed.runtime.data`: a DataLoader whose ``--workers``
  decode and resize item by item);
- ``materialise``: the straightforward reference the trainers used before, the whole training
  split decoded into memory first (``ds.tensors()``), then batches indexed from it.

Measured per run: the peak summed PSS (proportional set size, so pages shared by forked workers
count once) of the training process and its children, sampled every 20 ms from
``/proc/PID/smaps_rollup``; the process's own peak RSS (``ru_maxrss``); wall seconds. What to
compare: how the peak moves from the small to the large dataset within each path.

    .venv/bin/python benchmarks/train_memory.py [--sizes 2000 8000] [--steps 10] [--workers 1]
        [--image-size 64] [--json benchmarks/results/train_memory.json] [--keep DIR]

``--image-size 256`` trains the cpu-preset network at the paper's resolution, where the
materialised split costs 256 KiB per image instead of 16 KiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- data ------------------------------------------------------------------------------------------
def write_folder(folder: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """``n`` PNGs of ``size`` px plus ``labels.csv`` (columns ``image, big, small``) under ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 0.25 + 0.2 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.08)
    half = size // 4
    py, px = np.mgrid[-half:half, -half:half] / size
    blob_big = 0.4 * np.exp(-(py**2 + px**2) / 0.01)
    blob_small = 0.4 * np.exp(-(py**2 + px**2) / 0.001)
    rows = ["image,big,small"]
    for i in range(n):
        img = body + rng.normal(0, 0.01, body.shape)
        big, small = rng.random() < 0.4, rng.random() < 0.4
        for present, blob in ((big, blob_big), (small, blob_small)):
            if present:
                r, c = rng.integers(0, size - 2 * half, 2)
                img[r : r + 2 * half, c : c + 2 * half] += blob
        pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.png", compress_level=1)
        rows.append(f"img{i:05d}.png,{int(big)},{int(small)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


# -- measuring ---------------------------------------------------------------------------------------
def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(x) for x in fh.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


class PeakMemory:
    """Samples the summed PSS of this process and its descendants in a thread; ``peak_mib``."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_kib, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = sum(_pss_kib(p) for p in [me, *_children(me)])
            self.peak_kib = max(self.peak_kib, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


# -- one run (in a child process) ----------------------------------------------------------------------
def child(folder: str, mode: str, steps: int, workers: int, out: str, size: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from boed.runtime.data import TensorImages
    from classifiers.train import train_classifier
    from datasets import open_dataset

    t0 = time.perf_counter()
    with PeakMemory() as mem:
        train = open_dataset("folder", split="train", size=size, data_root=folder)
        val = open_dataset("folder", split="val", size=size, n=64, data_root=folder)
        n_train = len(train)
        if mode == "materialise":
            x, y = train.tensors()  # the old path: the whole split decoded into memory
            ds = TensorImages(x, y, source="folder-in-memory")
            ds.labels = train.labels
            train, workers = ds, 0
        train_classifier(
            out,
            preset="cpu",
            device="cpu",
            model_overrides={"image_size": size},
            train_set=train,
            val_set=val,
            workers=workers,
            train_overrides={"steps": steps, "val_every": steps, "n_val": 64, "num_threads": 1},
            log=lambda *_: None,
        )
    return {
        "mode": mode,
        "n_images": n_train,
        "workers": workers,
        "steps": steps,
        "peak_pss_mib": round(mem.peak_mib, 1),
        "peak_rss_self_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_child(folder: Path, mode: str, steps: int, workers: int, out: Path, size: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(folder),
        mode,
        str(steps),
        str(workers),
        str(out),
        str(size),
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run on {folder} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/train_memory.json"))
    parser.add_argument("--keep", type=Path, default=None, help="write the image folders here and keep them")
    parser.add_argument("--image-size", type=int, default=64, help="training size (cpu preset: 64)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, mode, steps, workers, out, size = args.child
        print(json.dumps(child(folder, mode, int(steps), int(workers), out, int(size))))
        return

    base = args.keep or Path(tempfile.mkdtemp(prefix="boed-train-memory-"))
    rows = []
    try:
        for n in args.sizes:
            folder = base / f"folder-{n}"
            if not (folder / "labels.csv").is_file():
                t0 = time.perf_counter()
                write_folder(folder, n)
                print(f"wrote {n} PNGs to {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
            for mode in ("materialise", "stream"):
                ckpt = base / f"ckpt-{n}-{mode}"
                row = run_child(folder, mode, args.steps, args.workers, ckpt, args.image_size)
                rows.append(row | {"dataset_size": n})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    print(
        f"\n{'path':<12} {'dataset':>8} {'train split':>11} {'peak PSS MiB':>13} "
        f"{'peak RSS MiB':>13} {'s':>6}"
    )
    for r in rows:
        print(
            f"{r['mode']:<12} {r['dataset_size']:>8} {r['n_images']:>11} {r['peak_pss_mib']:>13.1f} "
            f"{r['peak_rss_self_mib']:>13.1f} {r['seconds']:>6.1f}"
        )
    growth = {}
    for mode in ("materialise", "stream"):
        peaks = [r["peak_pss_mib"] for r in rows if r["mode"] == mode]
        if len(peaks) >= 2:
            growth[mode] = round(peaks[-1] - peaks[0], 1)
            print(
                f"{mode}: peak grows by {growth[mode]:.1f} MiB "
                f"from {args.sizes[0]} to {args.sizes[-1]} images"
            )
    record = {
        "benchmark": "train_memory",
        "command": "python benchmarks/train_memory.py " + " ".join(sys.argv[1:]),
        "preset": "cpu",
        "image_size": args.image_size,
        "source_size": 256,
        "rows": rows,
        "growth_mib": growth,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
