"""SQLAlchemy 2 models of the session store (the schema is documented in docs/store.md).

One *run* is one ``boed simulate`` invocation; it owns one *session* per (image, policy); a
session logs one *step* per scan (step 0 = the prediction before any scan) with the classifier's
*predictions* (one row per label, a long table that plain SQL can aggregate) and optional *arrays*
for report figures (raw little-endian bytes plus dtype and shape, never pickle).

Every JSON column is SQLAlchemy's portable ``JSON`` (not PostgreSQL's JSONB) and holds only finite
numbers: NaN is stored as ``null``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so that Alembic's batch mode on SQLite can find and alter them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Run(Base):
    """One run (a simulation, or a real acquisition): everything needed to reproduce it and its outcome."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # running | done | failed | interrupted
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    code_version: Mapped[str] = mapped_column(String(128))
    sampler: Mapped[str] = mapped_column(String(128))
    sampler_sha256: Mapped[str | None] = mapped_column(String(64))
    classifier: Mapped[str] = mapped_column(String(128))
    classifier_sha256: Mapped[str | None] = mapped_column(String(64))
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    labels: Mapped[list[str]] = mapped_column(JSON)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    target: Mapped[str | None] = mapped_column(String(64))  # a name of ``labels`` or "all" (0002)
    error: Mapped[str | None] = mapped_column(Text)  # why an interrupted/failed run stopped (0002)
    # simulation | acquisition (0003): boed simulate, or a real acquisition (docs/acquisition.md)
    kind: Mapped[str] = mapped_column(String(16), server_default=text("'simulation'"))


class Session(Base):
    """One acquisition session: one image scanned under one policy."""

    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("run_id", "image_id", "policy"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(String(256))
    image_index: Mapped[int] = mapped_column(Integer)
    policy: Mapped[str] = mapped_column(String(64))
    true_labels: Mapped[list[float | None]] = mapped_column(JSON)  # in the run's label order
    status: Mapped[str] = mapped_column(String(16))  # running | done | failed
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the image's located findings, [{"label": name, "box": [r0, c0, r1, c1]}, ...]; null: the
    # dataset gives no locations (migration 0005)
    findings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))


class Step(Base):
    """One step of a session: the scan taken (none at step 0) and the EIG that chose it."""

    __tablename__ = "steps"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    row: Mapped[int | None] = mapped_column(Integer)  # top-left pixel of the scanned patch
    col: Mapped[int | None] = mapped_column(Integer)
    candidate: Mapped[int | None] = mapped_column(Integer)  # index into the candidate grid
    eig: Mapped[float | None] = mapped_column(Float)  # EIG at the chosen location
    eig_map: Mapped[list[list[float | None]] | None] = mapped_column(JSON(none_as_null=True))  # (G, G) grid
    seconds: Mapped[float] = mapped_column(Float)
    # diagnostics of the decision that chose this scan (null without an EIG estimate; migration 0004)
    eig_se: Mapped[float | None] = mapped_column(Float)  # Monte Carlo standard error of the chosen EIG
    ess: Mapped[float | None] = mapped_column(Float)  # effective sample size of the completions
    target_observed: Mapped[float | None] = mapped_column(Float)  # g(target | x⊙m) before the scan
    target_completions: Mapped[float | None] = mapped_column(Float)  # mean g(target | completion)


class Prediction(Base):
    """The classifier's probability for one label after one step (long format)."""

    __tablename__ = "predictions"
    __table_args__ = (
        ForeignKeyConstraint(["session_id", "step"], ["steps.session_id", "steps.step"], ondelete="CASCADE"),
    )

    session_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    prob: Mapped[float | None] = mapped_column(Float)
    truth: Mapped[float | None] = mapped_column(Float)  # copy of the session's true label; null = unknown


class Array(Base):
    """A numeric array kept for report figures: raw little-endian bytes, dtype and shape."""

    __tablename__ = "arrays"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    dtype: Mapped[str] = mapped_column(String(16))  # numpy dtype string, e.g. "<f2"
    shape: Mapped[list[int]] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)
