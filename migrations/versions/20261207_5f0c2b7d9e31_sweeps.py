"""Sweeps: sweeps, sweep_trials, jobs.sweep_id, and Optuna's storage tables

Optuna's tables (studies, trials, trial_params, trial_intermediate_values, ...) are created here
from Optuna's own table definitions, so `tuneserve migrate` stays the one way the schema is made
and no process races another to create them at run time; the service opens Optuna's storage
with table creation and Optuna's own version check turned off (app/sweep/study.py).
tests/test_migrations.py checks that the tables made here still match the installed Optuna's.

Revision ID: 5f0c2b7d9e31
Revises: a91f3c2d7e10
Create Date: 2026-12-07 02:30:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "5f0c2b7d9e31"
down_revision: str | None = "a91f3c2d7e10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _optuna_metadata() -> Any:
    from optuna.storages._rdb import models

    return models.BaseModel.metadata


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("direction", sa.String(length=10), nullable=False),
        sa.Column("max_trials", sa.Integer(), nullable=False),
        sa.Column("parallel", sa.Integer(), nullable=False),
        sa.Column("time_budget_s", sa.Float(), nullable=True),
        sa.Column("pruning", sa.JSON(), nullable=True),
        sa.Column("alias", sa.String(length=64), nullable=True),
        sa.Column("stop_reason", sa.String(length=40), nullable=True),
        sa.Column("best_trial", sa.Integer(), nullable=True),
        sa.Column("best_value", sa.Float(), nullable=True),
        sa.Column("best_job_id", sa.String(length=40), nullable=True),
        sa.Column("best_model_id", sa.String(length=40), nullable=True),
        sa.Column("notes", sa.JSON(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sweeps_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )  # fmt: skip
    with op.batch_alter_table("sweeps") as batch:
        batch.create_index(batch.f("ix_sweeps_tenant_id"), ["tenant_id"], unique=False)
        batch.create_index(batch.f("ix_sweeps_status"), ["status"], unique=False)
    op.create_table(
        "sweep_trials",
        sa.Column("sweep_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_trials_sweep_id_sweeps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sweep_id", "number", name=op.f("pk_sweep_trials")),
        sa.UniqueConstraint("job_id", name=op.f("uq_sweep_trials_job_id")),
    )  # fmt: skip
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(length=40), nullable=True))
        batch.create_index(batch.f("ix_jobs_sweep_id"), ["sweep_id"], unique=False)
    _optuna_metadata().create_all(op.get_bind())


def downgrade() -> None:
    _optuna_metadata().drop_all(op.get_bind())
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_sweep_id"))
        batch.drop_column("sweep_id")
    op.drop_table("sweep_trials")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_index(batch.f("ix_sweeps_status"))
        batch.drop_index(batch.f("ix_sweeps_tenant_id"))
    op.drop_table("sweeps")
