"""runs.kind

One column on ``runs``: ``kind``, what made the run: ``simulation`` (``boed simulate``: hidden
images scanned by a simulated scanner) or ``acquisition`` (a real acquisition driven through
``boed.acquisition.Controller``, docs/acquisition.md). Not null, server default
``'simulation'``, so every existing row (all made by ``boed simulate``) reads ``simulation``.

Plain ``ADD COLUMN`` on every backend: no table is rebuilt, so SQLite's ``ON DELETE CASCADE``
rows below ``runs`` are never touched.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "runs",
        sa.Column("kind", sa.String(length=16), nullable=False, server_default=sa.text("'simulation'")),
    )


def downgrade() -> None:
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.drop_column("kind")
