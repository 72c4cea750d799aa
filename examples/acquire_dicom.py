"""An external acquisition loop driving the BOED controller, one exposure at a time.

The "scanner" here is a stand-in: it holds a DICOM radiograph and returns the pixels of one small
field of view per request, counting exposures, the way a real small field-of-view detector would
answer. The controller (``boed.acquisition.Controller``) never sees the image: it proposes a
location, the loop asks the scanner for that patch and hands it back with ``observe``. The
session is written to the store as it happens, like a simulated one but with run kind
``acquisition`` (``boed.acquisition.AcquisitionLog``), and a stopping rule ends it once the
classifier is sure enough or no scan is expected to tell much more.

    .venv/bin/python examples/acquire_dicom.py FILE.dcm [--db runs/boed.db] [--max-scans 5]
        [--stop-entropy 0.1] [--stop-eig 0.01] [--preset cpu] [--n-samples 10] [--grid 17]

Afterwards: ``boed sessions show --run RUN_ID`` (the steps and probabilities) and
``boed propose --session SESSION_ID`` (re-check the next decision from the store alone).
See docs/acquisition.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


class DicomScanner:
    """A scanner stand-in: one ``p x p`` patch of a DICOM radiograph per :meth:`acquire`.

    The file is read once (modality LUT, VOI LUT / window, MONOCHROME1 inversion:
    ``datasets.dicom.read_dicom``), centre-cropped and resized to ``image_size``; each request
    returns the patch at a location and counts one exposure.
    """

    def __init__(self, path: Path, image_size: int, patch_size: int):
        from datasets.base import to_square
        from datasets.dicom import read_dicom

        self.path, self.patch_size = Path(path), patch_size
        self._image = to_square(read_dicom(self.path).pixels, image_size)[0].numpy()  # (S, S) in [0, 1]
        self.exposures: list[tuple[int, int]] = []

    def acquire(self, location: tuple[int, int]) -> np.ndarray:
        """Expose the field whose top-left pixel is ``location``; returns ``(p, p)`` float32."""
        row, col = location
        p = self.patch_size
        self.exposures.append((row, col))
        return self._image[row : row + p, col : col + p].copy()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dicom", type=Path, help="the radiograph the scanner stand-in holds")
    parser.add_argument("--db", default=None, help="store URL or SQLite path (default runs/boed.db)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--classifier", default=None, help="classifier checkpoint (default: shipped)")
    parser.add_argument("--sampler", default="aipo")
    parser.add_argument("--sampler-checkpoint", default=None)
    parser.add_argument("--target", default="any")
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--grid", type=int, default=None)
    parser.add_argument("--scans-per-step", type=int, default=1)
    parser.add_argument("--max-scans", type=int, default=5)
    parser.add_argument("--stop-entropy", type=float, default=0.1, help="stop below this entropy (nats)")
    parser.add_argument("--stop-eig", type=float, default=0.01, help="stop when no scan's EIG reaches this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def acquire(args: argparse.Namespace) -> tuple[str, int]:
    """Run one acquisition; returns ``(run id, session id)``."""
    import torch

    from boed.acquisition import AcquisitionLog, Controller
    from boed.config import get_preset
    from boed.policies import StoppingRule
    from boed.scanner import CandidateGrid
    from boed.store import Store
    from classifiers import load_classifier
    from generative.registry import build_sampler

    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    classifier = load_classifier(args.classifier, preset=preset.name)
    sampler = build_sampler(args.sampler, args.sampler_checkpoint, preset=preset.name)
    candidates = CandidateGrid.from_grid(preset.image_size, preset.patch_size, args.grid or preset.grid)
    scanner = DicomScanner(args.dicom, preset.image_size, preset.patch_size)
    controller = Controller(
        sampler,
        classifier,
        candidates,
        args.target,
        args.n_samples or preset.n_samples,
        seed=args.seed,
        scans_per_step=args.scans_per_step,
    )
    rule = StoppingRule(entropy_below=args.stop_entropy, eig_below=args.stop_eig)
    store = Store.open(args.db)
    log = AcquisitionLog(
        store,
        controller,
        image_id=args.dicom.name,
        config={
            "preset": preset.name,
            "sampler": args.sampler,
            "sampler_checkpoint": args.sampler_checkpoint,
            "classifier_checkpoint": args.classifier,
            "max_scans": args.max_scans,
            "stop_entropy": args.stop_entropy,
            "stop_eig": args.stop_eig,
        },  # fmt: skip
        dataset={"source": "dicom", "file": args.dicom.name, "image_size": preset.image_size},
        seed=args.seed,
    )
    stopped = False
    try:
        log.start()  # step 0: the classifier before any exposure
        while len(scanner.exposures) < args.max_scans:
            proposal = controller.propose()
            if rule.should_stop(proposal.entropy, proposal.eig):
                stopped = True
                break
            for location in proposal.locations[: args.max_scans - len(scanner.exposures)]:
                patch = scanner.acquire(location)  # the outside world takes the exposure
                controller.observe(location, patch)
                log.scan(proposal, location)
            p_target = float(controller.probs[0, controller.target.indices[0]])
            print(
                f"scan {len(scanner.exposures)}: {proposal.locations} EIG {proposal.best_eig:.4f} "
                f"± {float(proposal.stderr[proposal.candidate]):.4f}; "
                f"p({controller.target.title}) = {p_target:.3f}"
            )
    except BaseException as exc:
        log.finish(status="failed" if isinstance(exc, Exception) else "interrupted", error=str(exc)[:500])
        raise
    log.finish(stopped_early=stopped)
    why = "stopping rule" if stopped else "scan budget"
    print(
        f"run {log.run_id} (acquisition), session {log.session_id}: {len(scanner.exposures)} exposures, "
        f"ended by the {why}; entropy {controller.entropy:.4f} nats; store {store.url}"
    )
    return log.run_id, log.session_id


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from boed.errors import BoedError
    from boed.store.errors import StoreError
    from classifiers.errors import ClassifierError
    from datasets.errors import DatasetError
    from generative.errors import SamplerError

    try:
        acquire(args)
    except (BoedError, DatasetError, StoreError, ClassifierError, SamplerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
    raise SystemExit(main())
