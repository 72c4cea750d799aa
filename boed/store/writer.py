"""The store's write path, used by the simulation: runs, sessions, steps, arrays, resuming."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update

from boed.store.base import StoreBase
from boed.store.errors import StoreError
from boed.store.models import Array, Prediction, Run, Session, Step
from boed.store.records import (
    DIAGNOSTICS,
    MAX_ERROR_CHARS,
    RUN_KINDS,
    RUN_STATUSES,
    findings_json,
    finite_or_none,
    floats,
    jsonable,
    new_run_id,
    now,
)


class WritePath(StoreBase):
    """Write path (the simulation): :meth:`create_run`, :meth:`start_session`, :meth:`log_step`,
    :meth:`save_array`, :meth:`finish_session`, :meth:`finish_run`, :meth:`resume_plan`."""

    def create_run(
        self,
        config: dict[str, Any],
        *,
        sampler: str,
        sampler_sha256: str | None,
        classifier: str,
        classifier_sha256: str | None,
        dataset: dict[str, Any],
        seed: int,
        labels: Sequence[str],
        code_version: str,
        target: str | None = None,
        kind: str = "simulation",
    ) -> str:
        """Record a new run (status ``running``) and return its id.

        ``target``: the label the run decides about, one of ``labels`` or ``"all"`` (None: not
        recorded; the run's config still holds the requested target). ``kind``: ``simulation``
        (``boed simulate``) or ``acquisition`` (a real acquisition, docs/acquisition.md).
        """
        if kind not in RUN_KINDS:
            raise StoreError(f"unknown run kind {kind!r}; valid: {', '.join(RUN_KINDS)}")
        labels = [str(label) for label in labels]
        if not labels or len(set(labels)) != len(labels):
            raise StoreError(f"a run needs a non-empty list of distinct label names, got {labels!r}")
        if target is not None and str(target) not in (*labels, "all"):
            raise StoreError(f"run target {target!r} is not one of its labels ({', '.join(labels)}) or 'all'")
        run = Run(
            run_id=new_run_id(),
            created_at=now(),
            finished_at=None,
            status="running",
            config=jsonable(config, "the run config"),
            code_version=str(code_version),
            sampler=str(sampler),
            sampler_sha256=sampler_sha256,
            classifier=str(classifier),
            classifier_sha256=classifier_sha256,
            dataset=jsonable(dataset, "the dataset description"),
            seed=int(seed),
            labels=labels,
            timings=None,
            target=None if target is None else str(target),
            error=None,
            kind=kind,
        )
        with self._write() as s:
            s.add(run)
        return run.run_id

    def start_session(
        self,
        run_id: str,
        *,
        image_id: str,
        image_index: int,
        policy: str,
        true_labels: Sequence[float],
        findings: Sequence[Any] | None = None,
    ) -> int:
        """Start the session of one (image, policy) in a run; returns the session id.

        ``true_labels`` in the run's label order, NaN = unknown. ``findings``: the image's located
        findings (``(label, (r0, c0, r1, c1))`` pixel boxes, :func:`~boed.store.records.findings_json`),
        or None where the dataset gives no locations. A pair already in the run is refused (use
        :meth:`resume_plan` to skip finished pairs when resuming).
        """
        truth = floats(true_labels, "true_labels")
        located = findings_json(findings)
        with self._write() as s:
            labels = self._run_labels(s, run_id)
            if len(truth) != len(labels):
                raise StoreError(
                    f"true_labels has {len(truth)} values but run {run_id} has {len(labels)} labels"
                )
            exists = s.scalar(
                select(Session.status).where(
                    Session.run_id == run_id, Session.image_id == str(image_id), Session.policy == str(policy)
                )
            )
            if exists is not None:
                raise StoreError(
                    f"run {run_id} already has a {exists} session for image {image_id!r} and policy "
                    f"{policy!r}; call resume_plan() first when resuming"
                )
            row = Session(
                run_id=run_id,
                image_id=str(image_id),
                image_index=int(image_index),
                policy=str(policy),
                true_labels=truth,
                status="running",
                error=None,
                started_at=now(),
                ended_at=None,
                findings=located,
            )
            s.add(row)
            s.flush()
            return row.id

    def log_step(
        self,
        session_id: int,
        *,
        step: int,
        location: tuple[int, int] | None,
        candidate: int | None,
        eig: float | None,
        eig_map: Sequence[Sequence[float]] | None,
        probs: Sequence[float],
        seconds: float,
        diagnostics: dict[str, float | None] | None = None,
    ) -> None:
        """Record one step (scan location, EIG, EIG map, timing) and its predictions, atomically.

        Step 0 is the prediction before any scan (``location=None``). ``probs`` holds one
        probability per run label, in the run's label order. ``diagnostics`` holds the decision's
        ``eig_se``, ``ess``, ``target_observed`` and ``target_completions`` (see
        :class:`boed.store.models.Step`; missing keys and non-finite values are stored as null).
        """
        unknown = sorted(set(diagnostics or {}) - set(DIAGNOSTICS))
        if unknown:
            raise StoreError(
                f"unknown step diagnostics {', '.join(unknown)}; valid: {', '.join(DIAGNOSTICS)}"
            )
        extra = {k: finite_or_none((diagnostics or {}).get(k)) for k in DIAGNOSTICS}
        if location is not None:
            if len(location) != 2:
                raise StoreError(f"location must be (row, col) or None, got {location!r}")
            row, col = (int(v) for v in location)
        else:
            row = col = None
        p = floats(probs, "probs")
        eig_grid = None
        if eig_map is not None:
            if hasattr(eig_map, "detach"):
                eig_map = eig_map.detach().cpu()
            eig_grid = jsonable(np.asarray(eig_map, dtype=np.float64), "eig_map")
        with self._write() as s:
            found = s.execute(
                select(Session.status, Session.true_labels, Run.labels)
                .join(Run, Run.run_id == Session.run_id)
                .where(Session.id == session_id)
            ).one_or_none()
            if found is None:
                raise StoreError(f"unknown session id {session_id}")
            status, truth, labels = found
            if status != "running":
                raise StoreError(f"session {session_id} is already {status}; cannot log step {step}")
            if len(p) != len(labels):
                raise StoreError(f"probs has {len(p)} values but the run has {len(labels)} labels")
            if s.get(Step, (session_id, int(step))) is not None:
                raise StoreError(f"step {step} of session {session_id} is already logged")
            s.execute(
                insert(Step).values(
                    session_id=session_id,
                    step=int(step),
                    row=row,
                    col=col,
                    candidate=None if candidate is None else int(candidate),
                    eig=finite_or_none(eig),
                    eig_map=eig_grid,
                    seconds=float(seconds),
                    **extra,
                )
            )
            s.execute(
                insert(Prediction),
                [
                    {"session_id": session_id, "step": int(step), "label": label, "prob": prob, "truth": t}
                    for label, prob, t in zip(labels, p, truth, strict=True)
                ],
            )

    def save_array(self, session_id: int, step: int, name: str, array: Any) -> None:
        """Keep a numeric array (e.g. float16 completions) for report figures; replaces an
        array saved before under the same (session, step, name). Stored as raw little-endian
        bytes with its dtype and shape, never pickled."""
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        a = np.asarray(array)
        if a.dtype.kind not in "biufc":
            raise StoreError(f"array {name!r} has dtype {a.dtype}; only numeric arrays can be saved")
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
        with self._write() as s:
            if s.get(Session, session_id) is None:
                raise StoreError(f"unknown session id {session_id}")
            s.merge(
                Array(
                    session_id=session_id,
                    step=int(step),
                    name=str(name),
                    dtype=a.dtype.str,
                    shape=list(a.shape),
                    data=a.tobytes(),
                )
            )

    def finish_session(self, session_id: int, *, status: str = "done", error: str | None = None) -> None:
        """Mark a session ``done`` or ``failed`` (with the error message)."""
        if status not in ("done", "failed"):
            raise StoreError(f"unknown session status {status!r}; valid: done, failed")
        with self._write() as s:
            found = s.execute(
                update(Session)
                .where(Session.id == session_id)
                .values(
                    status=status,
                    error=None if error is None else str(error)[:MAX_ERROR_CHARS],
                    ended_at=now(),
                )
            )
            if found.rowcount == 0:
                raise StoreError(f"unknown session id {session_id}")

    def finish_run(
        self, run_id: str, *, status: str, timings: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """Mark a run ``done``, ``failed`` or ``interrupted``; store its timings and, for a run
        that stopped early, why (``error``, one line)."""
        if status not in RUN_STATUSES[1:]:
            raise StoreError(f"unknown run status {status!r}; valid: {', '.join(RUN_STATUSES[1:])}")
        values = {
            "status": status,
            "finished_at": now(),
            "error": None if error is None else str(error)[:MAX_ERROR_CHARS],
        }
        if timings is not None:
            values["timings"] = jsonable(timings, "timings")
        with self._write() as s:
            if s.execute(update(Run).where(Run.run_id == run_id).values(**values)).rowcount == 0:
                raise self._unknown_run(s, run_id)

    def resume_plan(self, run_id: str, *, retry_failed: bool = False) -> set[tuple[str, str]]:
        """Prepare ``run_id`` to be resumed; return the (image_id, policy) pairs to skip.

        Sessions started but never finished are deleted with their steps, predictions and
        arrays (and, with ``retry_failed``, the failed ones too), so running every pair not
        returned gives a run with no duplicated and no lost sessions. The run is marked
        ``running`` again (its ``error`` cleared).
        """
        stale_statuses = ["running", "failed"] if retry_failed else ["running"]
        with self._write() as s:
            if s.get(Run, run_id) is None:
                raise self._unknown_run(s, run_id)
            stale = select(Session.id).where(Session.run_id == run_id, Session.status.in_(stale_statuses))
            ids = list(s.scalars(stale))
            if ids:
                # children first: correct even where the database does not enforce ON DELETE CASCADE
                for table in (Prediction, Step, Array):
                    s.execute(delete(table).where(table.session_id.in_(ids)))
                s.execute(delete(Session).where(Session.id.in_(ids)))
            s.execute(
                update(Run).where(Run.run_id == run_id).values(status="running", finished_at=None, error=None)
            )
            done = s.execute(select(Session.image_id, Session.policy).where(Session.run_id == run_id))
            return {(image_id, policy) for image_id, policy in done}

    def session_counts(self, run_id: str) -> dict[str, int]:
        """``{status: number of sessions}`` of the whole run (every status present, e.g.
        ``{"done": 40, "failed": 2}``), read from the database: true across resumed parts."""
        with self._read() as conn:
            self._check_run(conn, run_id)
            rows = conn.execute(
                select(Session.status, func.count()).where(Session.run_id == run_id).group_by(Session.status)
            )
            return {str(status): int(n) for status, n in rows}
