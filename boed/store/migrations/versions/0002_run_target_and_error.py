"""runs.target and runs.error

Two nullable columns on ``runs``: ``target``, the label the run decides about (a name of its
``labels`` or ``all``), filled for existing rows from the target stored in their config; and
``error``, why an interrupted or failed run stopped (a store fault, SIGTERM, a crash).

Plain ``ADD COLUMN`` on every backend: no table is rebuilt, so SQLite's ``ON DELETE CASCADE``
rows below ``runs`` are never touched.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_runs = sa.table(
    "runs",
    sa.column("run_id", sa.String()),
    sa.column("config", sa.JSON()),
    sa.column("labels", sa.JSON()),
    sa.column("target", sa.String()),
)


def target_of(config: dict | None, labels: list | None) -> str | None:
    """The target of a run written at schema 0001: its config's ``target`` ("any", "all" or a
    label name, case-insensitive) as a name of its labels (``"any"`` -> ``"Any"``) or ``"all"``;
    None when the config has none or it matches no label. (Kept here, not imported from boed, so
    that the migration stays what it was when later code changes.)"""
    spec = (config or {}).get("target")
    if not isinstance(spec, str) or not spec.strip():
        return None
    key = spec.strip().lower()
    if key == "all":
        return "all"
    for label in labels or []:
        if str(label).lower() == key:
            return str(label)
    return None


def upgrade() -> None:
    op.add_column("runs", sa.Column("target", sa.String(length=64), nullable=True))
    op.add_column("runs", sa.Column("error", sa.Text(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.select(_runs.c.run_id, _runs.c.config, _runs.c.labels)).all()
    for run_id, config, labels in rows:
        target = target_of(config, labels)
        if target is not None:
            conn.execute(sa.update(_runs).where(_runs.c.run_id == run_id).values(target=target))


def downgrade() -> None:
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.drop_column("error")
        batch.drop_column("target")
