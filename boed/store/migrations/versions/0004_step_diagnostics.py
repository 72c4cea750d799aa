"""steps: diagnostics of each decision

Four nullable columns on ``steps``, filled for the steps chosen from an EIG estimate (null at
step 0, for policies without one, and in older runs):

* ``eig_se``: the Monte Carlo standard error of the EIG at the chosen location;
* ``ess``: the effective sample size of the completions, ``(Σw)² / Σw²`` (N for equally weighted
  samplers; retrieval importance sampling reports fewer);
* ``target_observed``: the classifier's probability of the run's target on the observation the
  decision saw (g(v | x⊙m); for the ``all`` target the mean over its labels);
* ``target_completions``: the (weighted) mean of the classifier's probability of the target on
  the completions themselves (g(v | completion)). A large gap between the two means the
  classifier reads the sampler's completions differently from the observation, which biases the
  EIG estimate (Eq. 17 of Harvey et al. 2022 assumes they agree).

Plain ``ADD COLUMN`` on every backend (no table is rebuilt).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("eig_se", "ess", "target_observed", "target_completions")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("steps", sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps", recreate="never") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
