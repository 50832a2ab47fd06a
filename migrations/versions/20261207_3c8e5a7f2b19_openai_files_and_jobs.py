"""OpenAI-compatible API: uploaded files and the OpenAI terms of jobs submitted through it

Revision ID: 3c8e5a7f2b19
Revises: 5f0c2b7d9e31
Create Date: 2026-12-07 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c8e5a7f2b19"
down_revision: str | None = "5f0c2b7d9e31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "openai_files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_path", sa.String(length=500), nullable=False),
        sa.Column("datasets", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_openai_files_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openai_files")),
    )  # fmt: skip
    with op.batch_alter_table("openai_files") as batch:
        batch.create_index(batch.f("ix_openai_files_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "openai_jobs",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("training_file", sa.String(length=40), nullable=False),
        sa.Column("validation_file", sa.String(length=40), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_openai_jobs_job_id_jobs"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_openai_jobs")),
    )  # fmt: skip
    op.create_table(
        "openai_job_metadata",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["openai_jobs.job_id"],
            name=op.f("fk_openai_job_metadata_job_id_openai_jobs"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "key", name=op.f("pk_openai_job_metadata")),
    )  # fmt: skip
    with op.batch_alter_table("openai_job_metadata") as batch:
        batch.create_index("ix_openai_job_metadata_key_value", ["key", "value"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("openai_job_metadata") as batch:
        batch.drop_index("ix_openai_job_metadata_key_value")
    op.drop_table("openai_job_metadata")
    op.drop_table("openai_jobs")
    with op.batch_alter_table("openai_files") as batch:
        batch.drop_index(batch.f("ix_openai_files_tenant_id"))
    op.drop_table("openai_files")
