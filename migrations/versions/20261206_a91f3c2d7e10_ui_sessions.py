"""Dashboard sessions (server-side; the cookie holds a token whose hash is the id)

Revision ID: a91f3c2d7e10
Revises: e4b1c7a93d05
Create Date: 2026-12-06 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a91f3c2d7e10"
down_revision: str | None = "e4b1c7a93d05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_ui_sessions_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ui_sessions")),
    )  # fmt: skip
    with op.batch_alter_table("ui_sessions") as batch:
        batch.create_index(batch.f("ix_ui_sessions_key_id"), ["key_id"], unique=False)
        batch.create_index(batch.f("ix_ui_sessions_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ui_sessions") as batch:
        batch.drop_index(batch.f("ix_ui_sessions_expires_at"))
        batch.drop_index(batch.f("ix_ui_sessions_key_id"))
    op.drop_table("ui_sessions")
