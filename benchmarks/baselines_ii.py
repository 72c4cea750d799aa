"""Figures of the baseline samplers II (issue 14): local PixelCNN, Row LSTM, Diagonal BiLSTM,
Flattened Row LSTM, Attentive Neural Process.

    python benchmarks/baselines_ii.py --checkpoint pixelcnn-local=CKPT \\
        [--checkpoint row-lstm=...] [--n-images 8] [--n-samples 4] [--bpd-images 32] \\
        [--threads 1] [--json benchmarks/results/baselines_ii.json]

For each sampler (a trained checkpoint): the training time and settings (from the checkpoint's
JSON), the test bits/dim of the autoregressive ones on held-out phantoms, L1 / MSE (L2) / MAEM /
PSNR on held-out phantoms with the centre-square and AIPO masks
(:func:`benchmarks.sampler_quality.evaluate_quality`: same images, masks and seeds as every other
sampler's table), seconds per 10 completions of one 64×64 image (centre square) by the cached
sampler and, for the autoregressive ones, by the reference sampler (the whole network per pixel;
timed over ``--reference-positions`` positions and scaled to all of them: its cost per position is
constant), and the causality tests that guard each model. Writes one JSON per sampler
(``baselines_ii-<name>.json`` beside ``--json``) and the combined ``--json``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

AUTOREGRESSIVE = ("pixelcnn-local", "row-lstm", "diagonal-bilstm", "flattened-row-lstm")
CAUSALITY_TESTS = {
    "pixelcnn-local": [
        "tests/generative/test_pixelcnn_local.py::test_logits_are_causal",
        "tests/generative/test_pixelcnn_local.py::test_mask_b_in_the_first_layer_is_caught",
        "tests/generative/test_pixelcnn_local.py::test_receptive_field_is_the_window",
        "tests/generative/test_pixelcnn_local.py::test_cached_sampler_draws_what_the_reference_draws",
    ],
    "row-lstm": [
        "tests/generative/test_pixel_rnn.py::test_logits_are_causal[row-lstm]",
        "tests/generative/test_pixel_rnn.py::test_row_lstm_with_an_unmasked_input_to_state_is_caught",
        "tests/generative/test_pixel_rnn.py::test_receptive_fields",
        "tests/generative/test_pixel_rnn.py::test_cached_sampler_draws_what_the_reference_draws[*-row-lstm]",
    ],
    "diagonal-bilstm": [
        "tests/generative/test_pixel_rnn.py::test_skew_known_answer_and_inverse",
        "tests/generative/test_pixel_rnn.py::test_logits_are_causal[diagonal-bilstm]",
        "tests/generative/test_pixel_rnn.py::test_diagonal_bilstm_without_the_down_shift_leaks_the_future[_NoShift]",
        "tests/generative/test_pixel_rnn.py::test_diagonal_bilstm_without_the_down_shift_leaks_the_future[_ShiftWrongSide]",
        "tests/generative/test_pixel_rnn.py::test_receptive_fields",
        "tests/generative/test_pixel_rnn.py::test_cached_sampler_draws_what_the_reference_draws[*-diagonal-bilstm]",
    ],
    "flattened-row-lstm": [
        "tests/generative/test_pixel_rnn.py::test_logits_are_causal[flattened-row-lstm]",
        "tests/generative/test_pixel_rnn.py::test_flattened_lstm_fed_the_current_pixel_is_caught",
        "tests/generative/test_pixel_rnn.py::test_receptive_fields",
        "tests/generative/test_pixel_rnn.py::test_cached_sampler_draws_what_the_reference_draws[*-flattened-row-lstm]",
    ],
    "anp": [
        "tests/generative/test_anp.py::test_unobserved_pixels_do_not_change_the_completions",
        "tests/generative/test_anp.py::test_context_is_the_observed_pixels_capped",
    ],
}


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def evaluate(name: str, checkpoint: Path, images, args) -> dict:
    import torch
    from sampler_quality import evaluate_quality  # benchmarks/ is on sys.path when run as a script

    from datasets.masks import MASKS
    from generative.autoregressive import bits_per_dim, raster_positions, sample_raster
    from generative.registry import build_sampler

    sampler = build_sampler(name, checkpoint, preset=args.preset)
    meta = sampler.meta
    size = sampler.image_size
    row: dict = {
        "sampler": name,
        "checkpoint": str(checkpoint),
        "sha256": sampler.sha256,
        "config": meta.get("config"),
        "training": {
            k: meta.get("training", {}).get(k) for k in ("step", "seconds", "images_seen", "command")
        },
        "val_metrics": meta.get("metrics"),
        "causality_tests": CAUSALITY_TESTS[name],
    }
    model = sampler.model
    if name in AUTOREGRESSIVE:
        x = images[: args.bpd_images]
        with torch.no_grad():
            nll = torch.cat([model.nll(x[i : i + 16]) for i in range(0, len(x), 16)])
        row["test_bpd"] = float(bits_per_dim(nll.mean(), size * size))
        row["test_bpd_images"] = len(x)
    quality = evaluate_quality(
        sampler, images[: args.n_images], ["centre_square", "aipo"], n_samples=args.n_samples, seed=args.seed
    )
    row["quality"] = quality["masks"]
    row["quality_n_images"], row["quality_n_samples"] = min(args.n_images, len(images)), args.n_samples
    # speed: 10 completions of one image, centre square
    x1 = images[:1]
    m1 = MASKS["centre_square"](1, size, generator=torch.Generator().manual_seed(args.seed))
    row["seconds_per_10"] = _timed(
        lambda: sampler.sample(x1 * m1, m1, 10, generator=torch.Generator().manual_seed(0)), args.repeats
    )
    if name in AUTOREGRESSIVE:
        positions = len(raster_positions(m1.repeat(10, 1, 1, 1)))
        k = min(args.reference_positions, positions)
        with torch.inference_mode():
            t = _timed(
                lambda: sample_raster(
                    lambda c, _m: model.logits(c),
                    x1 * m1,
                    m1,
                    10,
                    model.levels,
                    max_positions=k,
                    generator=torch.Generator().manual_seed(0),
                ),
                1,
            )
        row["reference_seconds_per_10"] = t / k * positions
        row["reference_timed_positions"], row["positions"] = k, positions
        row["speed_up"] = row["reference_seconds_per_10"] / row["seconds_per_10"]
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--n-images", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--bpd-images", type=int, default=32)
    parser.add_argument("--reference-positions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/baselines_ii.json"))
    args = parser.parse_args(argv)

    import torch

    from datasets import open_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = dict(item.split("=", 1) for item in args.checkpoint)
    unknown = sorted(set(runs) - set(CAUSALITY_TESTS))
    if unknown:
        parser.error(
            f"--checkpoint: unknown sampler {', '.join(unknown)}; valid: {', '.join(CAUSALITY_TESTS)}"
        )
    n = max(args.n_images, args.bpd_images)
    ds = open_dataset("chestxray", split="test", size=64, n=n, seed=args.seed)
    images, _ = ds.tensors()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    for name, path in runs.items():
        row = evaluate(name, Path(path), images, args)
        (args.json.parent / f"{args.json.stem}-{name}.json").write_text(json.dumps(row, indent=1))
        # the combined file keeps the models of earlier (or concurrent) runs: read just before writing
        out = json.loads(args.json.read_text()) if args.json.is_file() else {"models": {}}
        out |= {"data": ds.describe(), "threads": torch.get_num_threads()}
        out["models"][name] = row
        args.json.write_text(json.dumps(out, indent=1))
    print(table(out["models"]))
    return out


def table(models: dict) -> str:
    head = (
        "| sampler | steps | train s | test bpd | mask | L2 (MSE) | MAEM | PSNR "
        "| s / 10 (cached) | s / 10 (reference) |"
    )
    lines = [head, "|---" * 10 + "|"]
    for name, r in models.items():
        for mask, q in r["quality"].items():
            bpd = f"{r['test_bpd']:.3f}" if "test_bpd" in r else "–"
            ref = f"{r['reference_seconds_per_10']:.1f}" if "reference_seconds_per_10" in r else "–"
            lines.append(
                f"| {name} | {r['training']['step']} | {r['training']['seconds']:.0f} | {bpd} | {mask} | "
                f"{q['mse']:.4f} | {q['maem']:.4f} | {q['psnr']:.2f} | {r['seconds_per_10']:.2f} | {ref} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
