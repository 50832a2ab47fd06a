"""models.baseline_metrics: a quantized model's parent evaluated on the same rows

Revision ID: 5e3a7c1b9d24
Revises: 9b2d4e6f8a10
Create Date: 2026-11-23 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e3a7c1b9d24"
down_revision: str | None = "9b2d4e6f8a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("baseline_metrics", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("baseline_metrics")
