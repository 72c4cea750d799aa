"""The benchmark suite: every speed figure of the project in one run, each beside a reference.

``python -m benchmarks [--quick] [--threads 2] [--device cpu|cuda] [--only ITEMS] [--out DIR]``
runs each item in its own subprocess (so its peak memory is its own: ``ru_maxrss`` of that process,
and ``torch.cuda.max_memory_allocated`` on a GPU) and writes ``suite.json`` and ``suite.md`` in
``--out`` (default ``benchmarks/results``). Every figure is paired with a straightforward
reference measured in the same process, methods taking turns, so the ratio holds on a machine
whose load drifts; the load average is recorded at the start and end of every item.

Items (the functions reuse the per-topic scripts of ``benchmarks/``):

* ``decision-cpu``: one exact scan decision at the ``cpu`` preset (N = 10 completions, 17 x 17
  candidates): sampler draws + EIG of every candidate + argmax, per classifier runtime
  (``classifiers.runtime``: eager, onnx, compile), against the per-candidate loop
  (``boed.eig.expected_information_gain_loop``, timed over its first candidates and scaled).
* ``decision-paper``: the same at the ``paper`` preset (256 px, DenseNet-121, AIPO at the
  VD-VAE FFHQ-256 size). On a CPU one decision takes minutes, so it is *estimated* from its
  parts: the sampler's N draws (``--quick``: 2 draws, scaled) plus 2,890 classifier inputs at the
  measured rate; on ``--device cuda`` whole decisions are timed (fp32, bf16, compile + bf16).
* ``classifier``: classifier images/s per runtime at the ``cpu`` preset against a plain module
  forward (contiguous memory, whole batch), and at the ``paper`` preset
  (``benchmarks/classifier_throughput.py``).
* ``sampler:NAME`` for every name in ``generative.registry.SPECS``: completions/s of one batched
  call of N against N separate single calls (the shipped checkpoint, else an untrained one of the
  ``cpu`` preset from ``registry.untrained_checkpoint``: speed does not depend on the weights).
* ``pixel-constrained``: fast exact sampling against the straightforward raster method
  (``benchmarks/pixel_constrained.py``).
* ``gan-search``: latent-search iterations/s, N searches batched against N separate ones
  (``benchmarks/gan_inpainting.py``).
* ``sessions``: ``boed simulate`` sessions per minute, episodes batched against one at a time
  (``benchmarks/sessions.py``).
* ``baseline``: the peak memory of a process that only imports the project (to subtract).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ITEMS = (
    "baseline",
    "decision-cpu",
    "decision-paper",
    "classifier",
    "samplers",
    "pixel-constrained",
    "gan-search",
    "sessions",
)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(method, value, unit, *, reference=None, ratio=None, **extra) -> dict:
    return {"method": method, "value": value, "unit": unit, "reference": reference, "ratio": ratio, **extra}


def _turns(fns: dict, repeats: int, device) -> dict[str, list[float]]:
    """Seconds of each ``fns[name]()`` over ``repeats`` rounds, the methods taking turns."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _runtimes(classifier, names, precision="fp32"):
    from classifiers.runtime import with_runtime

    out = {}
    for name in names:
        try:
            out[name] = with_runtime(classifier, name, precision=precision)
        except Exception as exc:  # noqa: BLE001 - a missing runtime is reported, the rest still run
            print(f"  runtime {name} skipped: {exc}", flush=True)
    return out


# -- items ----------------------------------------------------------------------------------------


def decision_cpu(args, device) -> dict:
    """Median exact decision per runtime, and the per-candidate loop (scaled) as the reference."""
    import torch

    from benchmarks.decision import load_parts
    from boed.config import get_preset
    from boed.eig import expected_information_gain, expected_information_gain_loop
    from boed.scanner import CandidateGrid
    from datasets.phantoms import generate_phantoms

    pre = get_preset("cpu")
    classifier, sampler, notes = load_parts("cpu")
    grid = CandidateGrid.from_grid(pre.image_size, pre.patch_size, pre.grid)
    image = generate_phantoms(1, size=pre.image_size, seed=123).images[:1]
    mask = grid.masks[len(grid) // 2 : len(grid) // 2 + 1].clone()  # one central scan made
    observed = image * mask
    gen = torch.Generator().manual_seed(0)
    names = ["eager", "onnx"] + ([] if args.quick else ["compile"])
    clfs = _runtimes(classifier, names)
    parts: dict[str, list[tuple[float, float]]] = {name: [] for name in clfs}

    def decision(name):
        def run():
            t0 = time.perf_counter()
            comps = sampler.sample(observed, mask, pre.n_samples, generator=gen)
            t1 = time.perf_counter()
            eig = expected_information_gain(clfs[name], observed, mask, comps, grid, "any").eig
            int(torch.argmax(eig))
            parts[name].append((t1 - t0, time.perf_counter() - t1))

        return run

    t0 = time.perf_counter()
    for name in clfs:  # warm-up (compile: the compilation)
        decision(name)()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    warm = time.perf_counter() - t0
    for p in parts.values():
        p.clear()
    times = _turns({name: decision(name) for name in clfs}, args.repeats, device)
    # the straightforward reference: one classifier call per (candidate, completion), eager
    k = args.loop_candidates
    comps = sampler.sample(observed, mask, pre.n_samples, generator=gen)
    t0 = time.perf_counter()
    expected_information_gain_loop(classifier, observed, mask, comps, grid.masks[:k], "any")
    loop = statistics.median(p[0] for p in parts["eager"]) + (time.perf_counter() - t0) * len(grid) / k
    rows = [_row("per-candidate loop, eager (reference)", loop, "s", scaled_from_candidates=k)]
    for name, t in times.items():
        med = statistics.median(t)
        rows.append(
            _row(
                f"batched EIG, {name} classifier",
                med,
                "s",
                reference=rows[0]["method"],
                ratio=loop / med,
                sample_s=statistics.median(p[0] for p in parts[name]),
                eig_s=statistics.median(p[1] for p in parts[name]),
                runs=t,
            )
        )
    eager = statistics.median(times["eager"])
    for row in rows[1:]:
        row["vs_eager"] = eager / row["value"]
    return {
        "rows": rows,
        "notes": notes,
        "warm_up_s": warm,
        "n_samples": pre.n_samples,
        "candidates": len(grid),
        "target_s": 0.25,
    }


def decision_paper(args, device) -> dict:
    """Paper-preset decision: timed whole on a GPU, estimated from its parts on a CPU."""
    import torch

    from benchmarks.decision import load_parts
    from boed.config import get_preset
    from boed.eig import expected_information_gain
    from boed.scanner import CandidateGrid

    pre = get_preset("paper")
    classifier, sampler, notes = load_parts("paper")
    if device.type == "cuda":
        from classifiers.partial import PartialClassifier
        from generative.aipo import AIPOSampler

        classifier = PartialClassifier(classifier.model, temperature=classifier.temperature, device=device)
        sampler = AIPOSampler(sampler.model.to(device), name=sampler.name)
    size, n = pre.image_size, pre.n_samples
    grid = CandidateGrid.from_grid(size, pre.patch_size, pre.grid)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, size, size, generator=g).to(device)
    mask = grid.masks[len(grid) // 2 : len(grid) // 2 + 1].clone().to(device)
    observed = image * mask
    inputs = len(grid) * n
    if device.type == "cuda":
        gen = torch.Generator(device=device).manual_seed(0)
        variants = {"fp32": _runtimes(classifier, ["eager"])["eager"]}
        variants |= {f"{r}+bf16": c for r, c in _runtimes(classifier, ["eager", "compile"], "bf16").items()}

        def decision(clf):
            def run():
                comps = sampler.sample(observed, mask, n, generator=gen)
                int(torch.argmax(expected_information_gain(clf, observed, mask, comps, grid, "any").eig))

            return run

        for clf in variants.values():
            decision(clf)()
        torch.cuda.reset_peak_memory_stats(device)
        times = _turns({k: decision(c) for k, c in variants.items()}, args.repeats, device)
        ref = statistics.median(times["fp32"])
        rows = [
            _row(
                f"decision, classifier {k}",
                statistics.median(t),
                "s",
                reference="decision, classifier fp32",
                ratio=ref / statistics.median(t),
                runs=t,
            )
            for k, t in times.items()
        ]
        return {"rows": rows, "notes": notes, "estimated": False, "target_s": 0.2}
    draws = 2 if args.quick else n
    t0 = time.perf_counter()
    sampler.sample(observed, mask, draws, generator=g)
    sample_s = (time.perf_counter() - t0) * n / draws
    chunk = classifier.chunk_size
    xs, ms = observed.repeat(chunk, 1, 1, 1), mask.repeat(chunk, 1, 1, 1)
    classifier.predict(xs[:1], ms[:1])  # warm-up
    times = _turns(
        {"chunk": lambda: classifier.predict(xs, ms), "one": lambda: classifier.predict(xs[:1], ms[:1])},
        1 if args.quick else 2,
        device,
    )
    per_input = statistics.median(times["chunk"]) / chunk
    per_input_one = statistics.median(times["one"])
    est = sample_s + inputs * per_input
    ref = sample_s + inputs * per_input_one
    rows = [
        _row("decision, one input per call (reference, estimated)", ref, "s"),
        _row(
            f"decision, batched EIG, chunks of {chunk} (estimated)",
            est,
            "s",
            reference="decision, one input per call (reference, estimated)",
            ratio=ref / est,
            sample_s=sample_s,
            classifier_s=inputs * per_input,
            sampler_draws_timed=draws,
        ),
    ]
    return {"rows": rows, "notes": notes, "estimated": True, "classifier_inputs": inputs, "target_s": 0.2}


def _bound_predict(clf, x, m):
    return lambda: clf.predict(x, m)


def classifier_item(args, device) -> dict:
    """Images/s per runtime (cpu preset) against a plain forward; paper preset by classifier_throughput."""
    import torch

    from benchmarks.classifier_throughput import bench_preset
    from classifiers.avp_cnn import AVPCNN
    from classifiers.partial import load_classifier

    clf = load_classifier(None, preset="cpu", device=device)
    n = 17 * 17 * 10
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 64, 64, generator=g).to(device)
    m = (torch.rand(n, 1, 64, 64, generator=g) > 0.7).float().to(device)
    plain = AVPCNN(clf.config).to(device).eval()
    plain.load_state_dict(clf.model.state_dict())

    def reference():
        with torch.inference_mode():
            return torch.sigmoid(plain(x, m) / clf.temperature)

    runtimes = ["eager", "onnx"] + ([] if args.quick else ["compile"])
    clfs = _runtimes(clf, runtimes)
    fns = {"plain forward, contiguous, whole batch (reference)": reference}
    fns |= {f"predict, {name}": _bound_predict(c, x, m) for name, c in clfs.items()}
    for fn in fns.values():
        fn()  # warm-up (compile: the compilation)
    times = _turns(fns, args.repeats, device)
    ref = n / statistics.median(times["plain forward, contiguous, whole batch (reference)"])
    expect = reference()
    rows = []
    for name, t in times.items():
        rate = n / statistics.median(t)
        row = _row(
            f"cpu preset: {name}",
            rate,
            "img/s",
            reference=None
            if "reference" in name
            else "cpu preset: plain forward, contiguous, whole batch (reference)",
            ratio=rate / ref,
        )
        if name.startswith("predict, "):
            got = clfs[name.removeprefix("predict, ")].predict(x[:256], m[:256])
            row["max_abs_diff_vs_reference"] = float((got - expect[:256]).abs().max())
        rows.append(row)
    for r in bench_preset("paper", 8 if args.quick else 32, device, 1 if args.quick else 3, [16]):
        rows.append(
            _row(
                f"paper preset: {r['method']}",
                r["img_per_s"],
                "img/s",
                ratio=r["ratio_vs_reference"],
                reference="paper preset: plain forward, whole batch (reference)"
                if "reference" not in r["method"]
                else None,
            )
        )
    return {"rows": rows, "weights": clf.name, "images": n}


def sampler_item(args, device, name: str) -> dict:
    """Completions/s of sampler ``name``: N in one call against N separate calls of one."""
    import torch

    from generative.registry import build_sampler, get_spec, untrained_checkpoint

    spec = get_spec(name)
    try:
        sampler = build_sampler(name, None, preset="cpu", device=str(device))
        weights = "shipped"
    except Exception:  # noqa: BLE001 - no shipped file: an untrained model of the same size
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        ckpt = untrained_checkpoint(name, tmp / name, preset="cpu")
        sampler = build_sampler(name, ckpt, preset="cpu", device=str(device))
        weights = "untrained (cpu preset)" if ckpt is not None else "none needed"
    size = sampler.image_size
    n = 2 if args.quick else 10
    g = torch.Generator().manual_seed(0)
    from datasets.phantoms import generate_phantoms

    image = generate_phantoms(1, size=size, seed=5).images[:1].to(device)
    mask = torch.zeros_like(image)
    q = size // 4
    if args.quick:  # most of the image observed, a hole of one scan: the costs of many samplers scale with it
        mask[:] = 1
        mask[..., q : 2 * q, q : 2 * q] = 0
    else:  # one scan observed: the setting of BOED's first decisions
        mask[..., q : 2 * q, q : 2 * q] = 1
    observed = image * mask
    sampler.sample(observed, mask, 1, generator=g)  # warm-up: lazy initialisation is not sampling
    t0 = time.perf_counter()
    for _ in range(n):
        sampler.sample(observed, mask, 1, generator=g)
    separate = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler.sample(observed, mask, n, generator=g)
    batched = time.perf_counter() - t0
    rows = [
        _row(f"{name}: {n} separate calls of 1 (reference)", n / separate, "completions/s"),
        _row(
            f"{name}: one call of {n}",
            n / batched,
            "completions/s",
            reference=f"{name}: {n} separate calls of 1 (reference)",
            ratio=separate / batched,
        ),
    ]
    missing = float(1 - mask.mean())
    return {
        "rows": rows,
        "weights": weights,
        "deterministic": spec.deterministic,
        "n": n,
        "missing_fraction": missing,
        "image_size": size,
    }


def pixel_constrained_item(args, device) -> dict:
    from benchmarks.pixel_constrained import speed
    from datasets.phantoms import generate_phantoms
    from generative.family import load_family_model
    from generative.pixel_constrained import FAMILY
    from generative.registry import shipped_checkpoint

    model, _meta = load_family_model(shipped_checkpoint("cpu", "pixel-constrained"), FAMILY)
    image = generate_phantoms(1, size=model.image_size, seed=7).images[:1]
    s = speed(model, image, raster_positions=2 if args.quick else 10, seed=0)
    ref = "straightforward raster method, 10 completions (reference, extrapolated)"
    rows = [
        _row(ref, s["raster_seconds_10_extrapolated"], "s", pixels_timed=s["raster_pixels_timed"]),
        _row(
            "fast exact method, 10 completions",
            s["fast_seconds_10"],
            "s",
            reference=ref,
            ratio=s["speedup"],
            first_pixels_identical=s["first_pixels_identical"],
        ),
    ]
    return {"rows": rows, "missing_fraction": s["missing_frac"]}


def gan_item(args, device) -> dict:
    from benchmarks.gan_inpainting import speed
    from datasets.phantoms import generate_phantoms
    from generative.registry import build_sampler, untrained_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench-gan-"))
    samplers = {
        name: build_sampler(name, untrained_checkpoint(name, tmp / name, preset="cpu"), preset="cpu")
        for name in ("gan-yeh", "wgan-vitoria")
    }
    image = generate_phantoms(1, size=64, seed=3).images[:1]
    iterations = 20 if args.quick else 200
    out = speed(samplers, image, iterations=iterations, n=10, seed=0)
    rows = []
    for name, s in out.items():
        ref = f"{name}: 10 separate searches (reference)"
        rows.append(_row(ref, 10 * iterations / s["separate_s"], "latent-iterations/s"))
        rows.append(
            _row(
                f"{name}: 10 searches batched",
                10 * iterations / s["batched_s"],
                "latent-iterations/s",
                reference=ref,
                ratio=s["ratio"],
            )
        )
    return {"rows": rows, "iterations": iterations, "weights": "untrained (cpu preset)"}


def sessions_item(args, device) -> dict:
    from benchmarks.sessions import compare, run_once, steps_of
    from classifiers import load_classifier
    from datasets import open_dataset
    from generative.registry import build_sampler

    classifier = load_classifier(None, preset="cpu")
    sampler = build_sampler("aipo", None, preset="cpu")
    images, scans = (2, 2) if args.quick else (8, 5)
    dataset = open_dataset("phantoms", split="test", size=64, n=images, seed=0)
    rows, reference = [], None
    for b in (1, images):
        store, run_id, seconds, cpu, n, load = run_once(
            dataset, sampler, classifier, images=images, scans=scans, batch=b
        )
        steps = steps_of(store, run_id)
        reference = reference or steps
        same = compare(reference, steps)
        ref = "boed simulate, B = 1 episode at a time (reference)"
        rows.append(
            _row(
                ref if b == 1 else f"boed simulate, B = {b} episodes batched",
                60 * n / seconds,
                "sessions/min",
                reference=None if b == 1 else ref,
                cpu_seconds=cpu,
                sessions=n,
                load_average=load,
                same_locations=same["same_locations"],
            )
        )
    rows[1]["ratio"] = rows[1]["value"] / rows[0]["value"]
    return {
        "rows": rows,
        "images": images,
        "scans": scans,
        "policies": ["full-image", "boed", "random", "oracle"],
    }


def baseline_item(args, device) -> dict:
    import classifiers  # noqa: F401
    import generative.registry  # noqa: F401

    return {"rows": []}


def sampler_names() -> list[str]:
    from generative.registry import SAMPLERS

    return list(SAMPLERS)


# -- running ----------------------------------------------------------------------------------------


def run_item(item: str, args) -> dict:
    """Run one item in this process and add its peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()
    t0 = time.perf_counter()
    if item.startswith("sampler:"):
        result = sampler_item(args, device, item.split(":", 1)[1])
    else:
        fn = {
            "baseline": baseline_item,
            "decision-cpu": decision_cpu,
            "decision-paper": decision_paper,
            "classifier": classifier_item,
            "pixel-constrained": pixel_constrained_item,
            "gan-search": gan_item,
            "sessions": sessions_item,
        }[item]
        result = fn(args, device)
    result |= {
        "item": item,
        "seconds": time.perf_counter() - t0,
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def machine(args) -> dict:
    import torch

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = None
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": os.getloadavg(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        "# Benchmark suite",
        "",
        f"`python -m benchmarks{' --quick' if record['quick'] else ''} --threads {m['threads']} "
        f"--device {m['device']}` at {m['time']} (commit {m['commit']}): {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, {m['threads']} torch threads, "
        f"load average at start {', '.join(f'{x:.1f}' for x in m['load_average'])}.",
        "",
        "Each ratio is against the reference row of its item, measured in the same process with the "
        "methods taking turns; absolute figures drift with the load of a shared machine, the ratios "
        "much less. Peak RSS is that item's whole process (the `baseline` row is a process that only "
        "imports the project).",
        "",
        "| item | method | value | unit | × reference | peak RSS MiB | load avg (start → end) |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for r in record["items"]:
        load = ""
        if "load_average_start" in r:
            load = f"{r['load_average_start'][0]:.1f} → {r['load_average_end'][0]:.1f}"
        rss = _fmt(r.get("peak_rss_mib"))
        if "error" in r:
            lines.append(f"| {r['item']} | not measured: {r['error']} | | | | | |")
            continue
        if not r["rows"]:
            lines.append(f"| {r['item']} | (imports only) | | | | {rss} | {load} |")
        for row in r["rows"]:
            lines.append(
                f"| {r['item']} | {row['method']} | {_fmt(row['value'])} | {row['unit']} | "
                f"{_fmt(row['ratio'])} | {rss} | {load} |"
            )
    lines += ["", *[f"- {n}" for n in record.get("notes", [])], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="less work: a few minutes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per method (quick 3, else 5)")
    parser.add_argument("--loop-candidates", type=int, default=None, help="loop reference: candidates timed")
    parser.add_argument("--only", default=None, help=f"comma list of items: {', '.join(ITEMS)}, sampler:NAME")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per item (quick 600, else 1800)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--item", default=None, help=argparse.SUPPRESS)  # one item, in a subprocess
    parser.add_argument("--item-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from boed.runtime.devices import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))  # one line, before any item starts
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.loop_candidates = args.loop_candidates or (12 if args.quick else 60)
    if args.item:
        result = run_item(args.item, args)
        args.item_json.write_text(json.dumps(result, indent=2, default=float))
        return result
    items = args.only.split(",") if args.only else list(ITEMS)
    expanded = []
    for item in items:
        if item == "samplers":
            expanded += [f"sampler:{name}" for name in sampler_names()]
        elif item in ITEMS or item.startswith("sampler:"):
            expanded.append(item)
        else:
            parser.error(f"--only: unknown item {item!r}; valid: {', '.join(ITEMS)}, sampler:NAME")
    timeout = args.timeout or (600 if args.quick else 1800)
    record = {"quick": args.quick, "machine": machine(args), "items": [], "notes": []}
    args.out.mkdir(parents=True, exist_ok=True)
    passthrough = [
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--loop-candidates",
        str(args.loop_candidates),
    ] + (["--quick"] if args.quick else [])
    for item in expanded:
        print(f"[{time.strftime('%H:%M:%S')}] {item} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "item.json"
            cmd = [sys.executable, "-m", "benchmarks", "--item", item, "--item-json", str(out), *passthrough]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            load = os.getloadavg()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                if proc.returncode == 0 and out.exists():
                    result = json.loads(out.read_text())
                else:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                    result = {"item": item, "error": f"exit {proc.returncode}: {tail[0][:200]}", "rows": []}
            except subprocess.TimeoutExpired:
                result = {
                    "item": item,
                    "error": f"over the {timeout:.0f} s limit",
                    "rows": [],
                    "load_average_start": load,
                    "load_average_end": os.getloadavg(),
                }
        record["items"].append(result)
        for row in result["rows"]:
            print(
                f"    {row['method']}: {_fmt(row['value'])} {row['unit']}"
                + (f" (x{row['ratio']:.2f} vs reference)" if row.get("ratio") else ""),
                flush=True,
            )
        if "error" in result:
            print(f"    not measured: {result['error']}", flush=True)
        # written after every item, so an interrupted run keeps what it measured
        (args.out / "suite.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
        (args.out / "suite.md").write_text(markdown(record))
    print(f"wrote {args.out / 'suite.json'} and {args.out / 'suite.md'}")
    return record
