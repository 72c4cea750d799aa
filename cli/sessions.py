"""``boed sessions list|show|export``: look at the session store from the shell.

Thin: each command opens the store (``--db``, default runs/boed.db), calls the read API of
boed.store and prints a rich table or writes files. The library is imported inside the commands
so that ``boed --help`` stays fast.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from cli.common import console, user_errors

sessions_app = typer.Typer(
    help="List, show and export the runs and sessions in the session store.", no_args_is_help=True
)

DB = typer.Option(None, "--db", help="Database URL or SQLite file [default: runs/boed.db].")
RUN = typer.Option(None, "--run", help="Run id [default: every run for list/export, the latest for show].")


class Format(StrEnum):
    csv = "csv"
    parquet = "parquet"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``boed`` app."""
    app.add_typer(sessions_app, name="sessions")


def _open(db: str | None):
    from boed.store import Store

    return Store.open(db)


def _latest(store, run: str | None) -> str:
    from boed.store import StoreError

    run = run or store.latest_run_id()
    if run is None:
        raise StoreError(f"the store {store.url} has no runs yet; `boed simulate` writes them")
    return run


def _fmt(value, digits: int = 3) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, list | tuple | dict) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _table(title: str, frame, columns: dict[str, str]) -> Table:
    from rich import box

    # light borders and folding cells: on an 80-column terminal nothing is cut off with "…"
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    for i, header in enumerate(columns.values()):
        # ids stay whole; short headers are not broken mid-word
        table.add_column(header, no_wrap=i == 0, overflow="fold", min_width=min(len(header), 6))
    for row in frame.itertuples(index=False):
        values = row._asdict()
        table.add_row(*(_fmt(values[name]) for name in columns))
    return table


@sessions_app.command("list")
def list_(db: str | None = DB, run: str | None = RUN) -> None:
    """List the runs, or with --run the sessions of one run."""
    with user_errors(), _open(db) as store:
        if run is None:
            runs = store.runs()
            if runs.empty:
                console.print(f"no runs in {store.url}")
                return
            runs["created"] = runs["created_at"].dt.strftime("%Y-%m-%d %H:%M")
            runs["sessions"] = [f"{d}/{n}" for d, n in zip(runs["n_done"], runs["n_sessions"], strict=True)]
            columns = {"run_id": "run", "created": "created", "status": "status", "target": "target",
                       "sampler": "sampler", "classifier": "classifier", "sessions": "done",
                       "n_failed": "failed"}  # fmt: skip
            if "target" not in runs:  # a store without the column (before schema 0002)
                del columns["target"]
            console.print(_table(f"runs in {store.url} (times in UTC)", runs, columns))
            return
        sessions = store.sessions(run)
        sessions["error"] = sessions["error"].map(
            lambda e: e if not isinstance(e, str) else e.splitlines()[0][:60]
        )
        columns = {"session_id": "session", "image_id": "image", "policy": "policy", "status": "status",
                   "n_steps": "steps", "seconds": "seconds", "error": "error"}  # fmt: skip
        console.print(_table(f"sessions of run {run}", sessions, columns))


@sessions_app.command("show")
def show(
    session: int | None = typer.Argument(None, help="A session id: show its steps instead of the run."),
    db: str | None = DB,
    run: str | None = RUN,
    label: str | None = typer.Option(
        None,
        "--label",
        help="The label whose accuracy / probability is shown (any label of the run, or all) "
        "[default: the run's target].",
    ),
) -> None:
    """Show a run (its record and the accuracy of its target by number of scans per policy) or a session."""
    with user_errors(), _open(db) as store:
        if session is not None:
            _show_session(store, session, label)
            return
        run = _latest(store, run)
        record = store.get_run(run)
        target = _target(record, label)
        info = Table.grid(padding=(0, 2))
        info.add_column(no_wrap=True)
        info.add_column(overflow="fold")  # long values (sha256, configs) wrap instead of being cut
        fields = ("run_id", "kind", "status", "created_at", "finished_at", "sampler", "sampler_sha256",
                  "classifier", "classifier_sha256", "seed", "code_version")  # fmt: skip
        for name in fields:
            info.add_row(name, _fmt(getattr(record, name)))
        info.add_row("target", target.title)
        info.add_row("dataset", str(record.dataset))
        info.add_row("config", str(record.config))
        if record.timings:
            info.add_row("timings", str(record.timings))
        console.print(info)
        predictions = store.predictions(run)
        summary = accuracy_by_step(predictions[predictions["label"].isin(target.labels)])
        if summary.empty:
            console.print(f"no finished sessions with a known {target.title} label yet")
            return
        columns = {"policy": "policy", "step": "scans", "sessions": "sessions", "accuracy": "accuracy",
                   "entropy": "mean entropy (nats)"}  # fmt: skip
        pooled = " (pooled over its labels)" if len(target.labels) > 1 else ""
        console.print(_table(f"{target.title}: accuracy by number of scans{pooled}", summary, columns))


def _target(record, label: str | None):
    """The run's target (or ``label``), resolved against the run's labels; StoreError if unknown."""
    from boed.errors import BoedError
    from boed.report import run_target
    from boed.store import StoreError

    try:
        return run_target(record, label)
    except BoedError as exc:
        raise StoreError(f"--label: {exc}") from None


def _show_session(store, session_id: int, label: str | None) -> None:
    record = store.get_session(session_id)
    run = store.get_run(record.run_id)
    labels = list(run.labels)
    target = _target(run, label)
    truth = ", ".join(f"{name} = {_fmt(record.true_labels[labels.index(name)], 0)}" for name in target.labels)
    console.print(
        f"session {record.id} of run {record.run_id}: image {record.image_id} (index {record.image_index}), "
        f"policy {record.policy}, {record.status}; true {truth}"
    )
    if record.error:
        console.print(f"error: {record.error}", style="red", highlight=False)
    steps = store.steps(record.run_id, status=None)
    frame = steps[steps["session_id"] == session_id]
    probs = store.predictions(record.run_id, status=None)
    probs = probs[probs["session_id"] == session_id]
    columns = {"step": "step", "row": "row", "col": "col", "candidate": "candidate", "eig": "EIG"}
    for i, name in enumerate(target.labels):
        column = probs[probs["label"] == name][["step", "prob"]].rename(columns={"prob": f"p{i}"})
        frame = frame.merge(column, on="step", how="left")
        columns[f"p{i}"] = f"P({name})"
    columns["seconds"] = "seconds"
    console.print(_table("steps", frame, columns))
    arrays = store.load_arrays(session_id)
    if arrays:
        names = ", ".join(f"{name}@{step} {tuple(a.shape)} {a.dtype}" for (step, name), a in arrays.items())
        console.print(f"arrays: {names}")


def accuracy_by_step(predictions):
    """Accuracy (threshold 0.5) and mean binary entropy (nats) per (policy, step) of a long
    predictions table restricted to one label; rows with unknown truth are left out. Sessions
    that stopped early count only up to their last step (the report carries them forward)."""
    import numpy as np
    import pandas as pd

    known = predictions.dropna(subset=["truth", "prob"])
    if known.empty:
        return pd.DataFrame(columns=["policy", "step", "sessions", "accuracy", "entropy"])
    p = known["prob"].clip(1e-7, 1 - 1e-7)
    known = known.assign(
        correct=((known["prob"] >= 0.5) == (known["truth"] > 0.5)).astype(float),
        entropy=-(p * np.log(p) + (1 - p) * np.log(1 - p)),
    )
    grouped = known.groupby(["policy", "step"], as_index=False)
    return grouped.agg(
        sessions=("session_id", "nunique"), accuracy=("correct", "mean"), entropy=("entropy", "mean")
    )


@sessions_app.command("export")
def export(
    format: Format = typer.Option(Format.csv, "--format", help="File format."),
    db: str | None = DB,
    run: str | None = RUN,
    out: Path = typer.Option(Path("."), "--out", help="Folder for the files (created)."),
    status: str = typer.Option("done", "--status", help="Sessions to export: done, failed, running or all."),
) -> None:
    """Write the long predictions table, the steps and the sessions as csv or parquet files."""
    import json

    with user_errors(), _open(db) as store:
        selected = None if status == "all" else status
        predictions = store.predictions(run, status=selected)
        steps = store.steps(run, status=selected, eig_map=format == Format.parquet)
        sessions = store.sessions(run)
        if selected is not None:
            sessions = sessions[sessions["status"] == selected]
        if format == Format.csv:  # nested lists as JSON text
            as_json = [json.dumps([None if math.isnan(v) else v for v in t]) for t in sessions["true_labels"]]
            sessions = sessions.assign(true_labels=as_json)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FileNotFoundError(f"cannot create the output folder {out}: {exc}") from None
        stem = run or "all"
        written = []
        for name, frame in (("predictions", predictions), ("steps", steps), ("sessions", sessions)):
            path = out / f"{stem}-{name}.{format.value}"
            if format == Format.csv:
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path, index=False)
            written.append((path, len(frame)))
    for path, rows in written:
        console.print(f"wrote {path} ({rows} rows)", highlight=False)
