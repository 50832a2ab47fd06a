"""tenants, api keys, job outbox, idempotency

Revision ID: c553c574c6c2
Revises: 4d90760f6041
Create Date: 2026-11-22 16:45:49.451138
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "c553c574c6c2"
down_revision: str | None = "4d90760f6041"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT = "default"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    # Rows that exist before tenants did belong to the default tenant.
    op.bulk_insert(
        sa.table("tenants", sa.column("id", sa.String), sa.column("created_at", sa.DateTime)),
        [{"id": DEFAULT_TENANT, "created_at": datetime.now(UTC)}],
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "idempotency_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_idempotency_records_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_records")),
        sa.UniqueConstraint(
            "tenant_id", "route", "key", name=op.f("uq_idempotency_records_tenant_id")
        ),
    )
    op.create_table(
        "job_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publish_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_messages_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_messages")),
    )
    with op.batch_alter_table("job_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_messages_job_id"), ["job_id"], unique=False)
        batch_op.create_index("ix_job_messages_unsent", ["sent_at", "id"], unique=False)

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=64), nullable=False, server_default=DEFAULT_TENANT
            )
        )
        batch_op.create_index(batch_op.f("ix_datasets_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_datasets_tenant_id_tenants"),
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.alter_column("tenant_id", server_default=None)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=64), nullable=False, server_default=DEFAULT_TENANT
            )
        )
        batch_op.create_index(batch_op.f("ix_jobs_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_tenant_id_tenants"),
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("tenant_id", server_default=None)

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=64), nullable=False, server_default=DEFAULT_TENANT
            )
        )
        batch_op.create_index(batch_op.f("ix_models_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_models_tenant_id_tenants"),
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.alter_column("tenant_id", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_models_tenant_id_tenants"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_models_tenant_id"))
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_tenant_id_tenants"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_tenant_id"))
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_datasets_tenant_id_tenants"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_datasets_tenant_id"))
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("job_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_job_messages_unsent")
        batch_op.drop_index(batch_op.f("ix_job_messages_job_id"))

    op.drop_table("job_messages")
    op.drop_table("idempotency_records")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))

    op.drop_table("api_keys")
    op.drop_table("tenants")
