"""jobs.progress_detail: percent done, elapsed seconds, ETA and samples/s of a running job

Revision ID: b7e2d94c1a53
Revises: 4188dcd881a1
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7e2d94c1a53"
down_revision: str | None = "4188dcd881a1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("progress_detail", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress_detail")
