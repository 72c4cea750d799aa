"""A real acquisition logged to the store like a simulated session (run kind ``acquisition``).

One run (``runs.kind = 'acquisition'``) with one session (policy ``boed``, true labels unknown)
whose steps are logged exactly as ``boed simulate`` logs them: step 0 the classifier before any
scan, then one step per scan with its location, candidate, the EIG it was chosen with, the EIG
map and the classifier's probabilities after it. After every step the observation itself is
kept (arrays ``observed`` and ``mask``, float32), so ``boed propose --session ID`` can recompute
the next decision from the store alone. ``boed sessions show`` and the read API
(``store.steps()``, ``store.predictions()``) read it like any other session.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from boed.errors import BoedError

if TYPE_CHECKING:
    from boed.acquisition.controller import Controller, Proposal

ACQUISITION = "acquisition"


class AcquisitionLog:
    """Write one acquisition driven by ``controller`` to ``store`` as it happens.

    Args:
        store: a ``boed.store.Store`` (or anything with its write API).
        controller: the acquisition's controller (its parts, grid and target are recorded).
        image_id: what was scanned (e.g. the DICOM's SOP Instance UID or file name).
        config: what else defines the acquisition (preset, checkpoints, stopping rule, ...),
            stored as the run's config next to the controller's own settings.
        dataset: a description of the source (``runs.dataset``).
        seed: the seed of the controller's generator.
    """

    def __init__(
        self,
        store: Any,
        controller: Controller,
        *,
        image_id: str,
        config: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        from boed.simulate import code_version

        self.store, self.controller = store, controller
        c = controller
        settings = {
            "kind": ACQUISITION,
            "target": c.target.name,
            "n_samples": c.n_samples,
            "grid": c.candidates.grid,
            "image_size": c.candidates.image_size,
            "patch_size": c.candidates.patch_size,
            "scans_per_step": c.scans_per_step,
            "memory_budget": c.memory_budget,
            "seed": int(seed),
        }
        self.config = dict(config or {}) | settings
        self.run_id = store.create_run(
            self.config,
            sampler=getattr(c.sampler, "name", type(c.sampler).__name__) if c.sampler is not None else "none",
            sampler_sha256=getattr(c.sampler, "sha256", None),
            classifier=getattr(c.classifier, "name", type(c.classifier).__name__),
            classifier_sha256=getattr(c.classifier, "sha256", None),
            dataset=dict(dataset or {}),
            seed=int(seed),
            labels=list(c.classifier.labels),
            code_version=code_version(),
            target=c.target.name,
            kind=ACQUISITION,
        )
        self.session_id = store.start_session(
            self.run_id,
            image_id=str(image_id),
            image_index=0,
            policy="boed",
            true_labels=[math.nan] * len(c.classifier.labels),
        )
        self.step = -1
        self._t0 = self._started = time.perf_counter()

    def start(self) -> None:
        """Log step 0: the classifier on what has been observed so far (usually nothing)."""
        if self.step != -1:
            raise BoedError("the acquisition log has already started")
        self._write(location=None, candidate=None, eig=None, eig_map=None)

    def scan(self, proposal: Proposal | None, location: tuple[int, int]) -> None:
        """Log the scan just observed at ``location`` (after ``controller.observe``), with the
        proposal it came from (its EIG map; the EIG of the location when it is a candidate: for
        the j-th scan of a step, the joint EIG of the first j)."""
        if self.step < 0:
            raise BoedError("call start() before logging scans")
        from boed.session import eig_grid

        candidates = self.controller.candidates
        candidate = candidates.index_of(location)
        eig = eig_map = None
        diagnostics = None
        if proposal is not None:
            if candidate is not None:
                diagnostics = {"eig_se": float(proposal.stderr[candidate])}
            j = proposal.locations.index(tuple(location)) if tuple(location) in proposal.locations else None
            values = proposal.maps[j] if j is not None else proposal.eig
            eig_map = eig_grid(values, candidates)
            if j is not None:
                eig = proposal.joint_eig[j]
            elif candidate is not None:
                eig = float(values[candidate])
        self._write(
            location=tuple(int(v) for v in location),
            candidate=candidate,
            eig=eig,
            eig_map=eig_map,
            diagnostics=diagnostics,
        )

    def _write(self, **values: Any) -> None:
        self.step += 1
        c = self.controller
        now = time.perf_counter()
        self.store.log_step(
            self.session_id,
            step=self.step,
            probs=[float(p) for p in c.probs[0].tolist()],
            seconds=now - self._t0,
            **values,
        )
        self.store.save_array(self.session_id, self.step, "observed", c.observed[0, 0].cpu().numpy())
        self.store.save_array(self.session_id, self.step, "mask", c.mask[0, 0].cpu().numpy())
        self._t0 = now

    def finish(self, *, status: str = "done", error: str | None = None, stopped_early: bool = False) -> None:
        """Close the session and the run (``failed`` with ``error`` when the loop broke off)."""
        session_status = "done" if status == "done" else "failed"
        self.store.finish_session(self.session_id, status=session_status, error=error)
        timings = {
            "total_s": round(time.perf_counter() - self._started, 3),
            "scans": max(0, self.step),
            "stopped_early": bool(stopped_early),
            "failed_sessions": 0 if status == "done" else 1,
        }
        self.store.finish_run(self.run_id, status=status, timings=timings, error=error)
