"""All tables. Statuses are StrEnums stored as plain strings, so adding one needs no migration."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.db.base import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class DatasetStatus(StrEnum):
    READY = "ready"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A sweep trial stopped early by the sweep's pruner (app/sweep); it registers no model.
    PRUNED = "pruned"

    @property
    def is_terminal(self) -> bool:
        return self in (
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.PRUNED,
        )


class EventType(StrEnum):
    STATUS = "status"
    LOG = "log"
    METRICS = "metrics"
    # Something the job goes on despite, that its results do not show by themselves.
    WARNING = "warning"


DEFAULT_TENANT = "default"


class Tenant(Base):
    """Who owns data: every dataset, job, model and key belongs to exactly one tenant."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key: only the SHA-256 of the secret is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # The first characters of the key, so people can tell keys apart; not enough to use it.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(40), index=True)
    format: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=DatasetStatus.READY)
    num_rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[str]] = mapped_column(JSON)
    label_names: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    label_counts: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Relative to the data directory; never derived from the client's file name.
    storage_path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    task: Mapped[str] = mapped_column(String(40))
    base_model: Mapped[str] = mapped_column(String(300))
    train_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    validation_dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=True
    )
    # The validated, defaults-filled spec: method, hyperparameters, seed.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    # Written by the training worker with the step: {"percent", "elapsed_s", "eta_s",
    # "samples_per_second"} (see worker/training/progress.py); None until an attempt trains.
    progress_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(60), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # What the worker resolved when training began: "auto" values and defaults made concrete.
    resolved_hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # {"trainable": n, "total": n} of the model as trained (after freezing or adapters).
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Written with the model it registers: the task's trivial baseline on the same validation
    # rows, the verdict against it, and the warnings its training raised (beside the spec's).
    baseline_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    quality: Mapped[str | None] = mapped_column(String(40), nullable=True)
    training_warnings: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # The sweep this job is a trial of (app/sweep); not a foreign key, like models.job_id.
    sweep_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    task: Mapped[str] = mapped_column(String(40), index=True)
    base_model: Mapped[str] = mapped_column(String(300))
    method: Mapped[str] = mapped_column(String(40))
    label_names: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # One job registers at most one model. Not a foreign key: a finished job can be deleted
    # and the model it made stays, naming the job that made it.
    job_id: Mapped[str] = mapped_column(String(40), unique=True)
    train_dataset_id: Mapped[str] = mapped_column(String(40))
    validation_dataset_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Relative to the data directory.
    storage_path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # How the weights are stored: "full" (a whole model), "adapter" (peft weights over the base),
    # "merged" (an adapter folded into its base at registration), or "int8_dynamic" (no weights:
    # the parent's, quantized when loaded).
    artifact: Mapped[str] = mapped_column(String(20), default="full", server_default="full")
    # The registered model this one was trained from (base_model "model:<id>"); not a foreign key,
    # so a parent can be deleted without rewriting its descendants' history.
    parent_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A quantized model's parent (fp32) evaluated on the same rows as `metrics`, by the same job;
    # a column rather than metadata so that listing models reads no files.
    parent_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The task's trivial baseline scored on the same validation rows as `metrics`, and the
    # verdict against it (app/ml/quality.py); null for models registered before there was one.
    baseline_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    quality: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobMessage(Base):
    """The outbox: a queue message owed for a job, written in the transaction that owes it.

    A relay publishes unsent rows and stamps `sent_at`; a message that never made it to the broker
    is therefore retried instead of lost, and a job is never left queued with nothing to wake it.
    """

    __tablename__ = "job_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_job_messages_unsent", "sent_at", "id"),)


class IdempotencyRecord(Base):
    """The first response to a request sent with an Idempotency-Key, replayed to its retries."""

    __tablename__ = "idempotency_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    route: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("tenant_id", "route", "key"),)


class ModelAlias(Base):
    """A tenant's name for one of its models (`production`), accepted wherever a model id is.

    Moving an alias re-points every caller that names it at once; the model it pointed to before
    is kept so a move can be undone.
    """

    __tablename__ = "model_aliases"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    previous_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UiSession(Base):
    """A signed-in dashboard session. The browser's cookie holds a random token; only its SHA-256
    is stored, and never the API key: the session acts for the key it was opened with, so
    revoking that key ends the session too."""

    __tablename__ = "ui_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie token
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    # Sent back in every form that changes something (and as X-CSRF-Token by scripts).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SweepStatus(StrEnum):
    RUNNING = "running"
    # Cancel was asked: its trials are being stopped; it ends `cancelled` once they have.
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (SweepStatus.SUCCEEDED, SweepStatus.FAILED, SweepStatus.CANCELLED)


class Sweep(Base):
    """A hyperparameter search: a job spec with search spaces, whose trials are ordinary jobs.

    The Optuna study (named by the sweep id) lives in the same database, in Optuna's own tables;
    these rows mirror what the API shows, so reading a sweep needs no Optuna.
    """

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    task: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default=SweepStatus.RUNNING, index=True)
    # The job spec as submitted, search spaces in place ({"loguniform": [a, b]}, ...).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metric: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(10))
    max_trials: Mapped[int] = mapped_column(Integer)
    parallel: Mapped[int] = mapped_column(Integer)
    time_budget_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # {"type": "median", "startup_trials", "warmup_evaluations"}, or null: no pruning.
    pruning: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # An alias pointed at the best trial's model when the sweep ends.
    alias: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    best_trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    best_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # What the sweep went on despite (a trial that could not be submitted, an alias not moved).
    notes: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # One driver at a time advances a sweep: it takes this lease with a conditional UPDATE.
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SweepTrial(Base):
    """One trial of a sweep: the Optuna trial `number`, its sampled parameters and its job."""

    __tablename__ = "sweep_trials"

    sweep_id: Mapped[str] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Not a foreign key: deleting an ended job leaves the trial's record.
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # running (its job queued or running), then succeeded, pruned, failed or cancelled.
    state: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OpenAIFile(Base):
    """A file uploaded through the OpenAI-compatible API (/openai/v1/files): its bytes as sent,
    kept in the store under `storage_path`; parsed into a dataset of a task when a job uses it."""

    __tablename__ = "openai_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="RESTRICT"), index=True
    )
    # The client's name for it: a label, never a path we open.
    filename: Mapped[str] = mapped_column(String(200))
    purpose: Mapped[str] = mapped_column(String(40))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_path: Mapped[str] = mapped_column(String(500))
    # Task -> the dataset parsed from this file for that task (made by the first job that needed
    # it, reused by later ones).
    datasets: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OpenAIJob(Base):
    """What a job submitted through the OpenAI-compatible API was asked with, in OpenAI's terms:
    the files, the model as named, the hyperparameters as sent, the suffix and the metadata."""

    __tablename__ = "openai_jobs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(300))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # {"asked": OpenAI's hyperparameters as sent, "default_learning_rate": what a multiplier of
    # 1 stands for}.
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Up to 16 string pairs, as sent (and one row each in openai_job_metadata, to filter on).
    job_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)


class OpenAIJobMetadata(Base):
    """One metadata pair of a job, so that listings filter on it (`metadata[k]=v`) with plain
    comparisons on any database."""

    __tablename__ = "openai_job_metadata"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("openai_jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))

    __table_args__ = (Index("ix_openai_job_metadata_key_value", "key", "value"),)
