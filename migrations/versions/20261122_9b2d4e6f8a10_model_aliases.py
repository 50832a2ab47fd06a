"""model aliases

Revision ID: 9b2d4e6f8a10
Revises: 7e1f0a9b3c21
Create Date: 2026-11-22 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9b2d4e6f8a10"
down_revision: str | None = "7e1f0a9b3c21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("previous_model_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_model_aliases_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_aliases_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "name", name=op.f("pk_model_aliases")),
    )
    with op.batch_alter_table("model_aliases") as batch:
        batch.create_index(batch.f("ix_model_aliases_model_id"), ["model_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_aliases") as batch:
        batch.drop_index(batch.f("ix_model_aliases_model_id"))
    op.drop_table("model_aliases")
