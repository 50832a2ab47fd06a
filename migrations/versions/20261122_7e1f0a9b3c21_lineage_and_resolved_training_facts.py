"""model lineage, artifact kind, resolved hyperparameters and parameter counts

Revision ID: 7e1f0a9b3c21
Revises: c553c574c6c2
Create Date: 2026-11-22 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7e1f0a9b3c21"
down_revision: str | None = "c553c574c6c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("resolved_hyperparameters", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("parameters", sa.JSON(), nullable=True))
    with op.batch_alter_table("models") as batch:
        batch.add_column(
            sa.Column("artifact", sa.String(length=20), nullable=False, server_default="full")
        )
        batch.add_column(sa.Column("parent_model_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("parameters", sa.JSON(), nullable=True))
        batch.create_index(batch.f("ix_models_parent_model_id"), ["parent_model_id"])
    # Models registered before this revision: peft methods were stored as adapters.
    op.execute("UPDATE models SET artifact = 'adapter' WHERE method IN ('lora', 'ia3')")


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_index(batch.f("ix_models_parent_model_id"))
        batch.drop_column("parameters")
        batch.drop_column("parent_model_id")
        batch.drop_column("artifact")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("parameters")
        batch.drop_column("resolved_hyperparameters")
