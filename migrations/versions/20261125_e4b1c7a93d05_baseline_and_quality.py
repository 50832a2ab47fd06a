"""Trivial baselines and quality verdicts on jobs and models; a quantized model's parent
comparison moves from models.baseline_metrics to models.parent_metrics

Revision ID: e4b1c7a93d05
Revises: b7e2d94c1a53
Create Date: 2026-11-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e4b1c7a93d05"
down_revision: str | None = "b7e2d94c1a53"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The rename keeps every quantized model's parent comparison; the new baseline_metrics
    # column starts empty (a model registered before it has no trivial baseline).
    with op.batch_alter_table("models") as batch:
        batch.alter_column("baseline_metrics", new_column_name="parent_metrics")
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("baseline_metrics", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("quality", sa.String(length=40), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("baseline_metrics", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("quality", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("training_warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("training_warnings")
        batch.drop_column("quality")
        batch.drop_column("baseline_metrics")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("quality")
        batch.drop_column("baseline_metrics")
    with op.batch_alter_table("models") as batch:
        batch.alter_column("parent_metrics", new_column_name="baseline_metrics")
