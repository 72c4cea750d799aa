"""sessions.findings: where the image's findings are

One nullable JSON column on ``sessions``: ``findings``, the located findings of the session's
image as the dataset gives them, a list of ``{"label": name, "box": [r0, c0, r1, c1]}`` (pixel
box of the simulated image, half-open; ``datasets.phantoms.Finding``). Null where the dataset
gives no locations (folders, DICOM, ChestX-ray14 images outside ``BBox_List_2017.csv``) and in
older runs; an empty list for an image the dataset locates and that has no finding (a healthy
phantom). The report's hit rate (``boed.report.coverage``) is computed from it and the steps'
scan locations, so ``boed report RUN_ID`` needs nothing but the store.

Plain ``ADD COLUMN`` on every backend: no table is rebuilt, so SQLite's ``ON DELETE CASCADE``
rows below ``sessions`` are never touched.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("findings", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions", recreate="never") as batch:
        batch.drop_column("findings")
