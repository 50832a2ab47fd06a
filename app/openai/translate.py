"""OpenAI's terms <-> Tuneserve's: the job request into a JobCreate, jobs, events and checkpoints
into OpenAI's objects. Every mapping is in the README's field table."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from app.basemodel.service import list_base_models
from app.core.config import Settings
from app.core.errors import BadRequest, InvalidInput, NotFound
from app.core.validation import plain_errors
from app.db.models import EventType, Job, JobEvent, JobStatus, Model, OpenAIJob
from app.job.kinds import job_kind, method_options
from app.job.schemas import CheckpointRead, Hyperparameters, Method
from app.ml.lineage import MODEL_PREFIX
from app.ml.methods.full import FullMethod
from app.openai.schemas import (
    CheckpointMetrics,
    CheckpointOut,
    FineTuningJob,
    FineTuningJobCreate,
    HyperparametersIn,
    HyperparametersOut,
    JobErrorOut,
    JobEventOut,
    MethodOut,
    SupervisedMethodIn,
    SupervisedOut,
    TuneserveJobFacts,
)
from app.registry.service import resolve_model_ref

OWNER = "tuneserve"  # owned_by of the base models
EVENT_PREFIX = "ftevent-"

OPENAI_STATUS: dict[str, str] = {JobStatus.PRUNED: "cancelled"}


class _MethodField(BaseModel):
    method: Method


def invalid_input(
    exc: ValidationError, root: type[BaseModel], prefix: tuple[str, ...]
) -> InvalidInput:
    problems = plain_errors(exc.errors(), root=root, prefix=prefix)
    return InvalidInput(
        "; ".join(p.message for p in problems),
        field=problems[0].field,
        errors=[p.as_dict() for p in problems],
    )


def resolve_model(
    session: Session, *, settings: Settings, tenant: str, name: str
) -> tuple[str, str | None]:
    """`model` as a job's base_model (a catalog id, or "model:<id>"), and a registered model's
    task (None for a base model)."""
    try:
        model = resolve_model_ref(session, tenant=tenant, ref=name.removeprefix(MODEL_PREFIX))
        return f"{MODEL_PREFIX}{model.id}", model.task
    except NotFound:
        pass
    available = [b.id for b in list_base_models(settings) if b.available]
    if name in available:
        return name, None
    raise BadRequest(
        f"model '{name[:100]}' is neither a base model of this server (available: "
        f"{', '.join(available) or 'none'}) nor one of your registered models or aliases",
        code="model_not_found",
        field="model",
    )


def training_methods() -> list[str]:
    """Tuneserve's methods that train, as the registries hold them (quantize and export derive a
    model from one: POST /v1/jobs)."""
    return sorted(name for name in method_options() if job_kind(name).trains)


def training_method(body: FineTuningJobCreate) -> tuple[BaseModel, HyperparametersIn | None]:
    """The Tuneserve method that trains, and where the hyperparameters were given."""
    raw = body.method
    if raw is None:
        return FullMethod(), body.hyperparameters
    kind = raw.get("type")
    if kind == "supervised":
        try:
            supervised = SupervisedMethodIn.model_validate(raw)
        except ValidationError as exc:
            raise invalid_input(exc, SupervisedMethodIn, ("method",)) from None
        inner = supervised.supervised.hyperparameters if supervised.supervised else None
        if inner is not None and body.hyperparameters is not None:
            raise InvalidInput(
                "hyperparameters: give them in method.supervised.hyperparameters or in "
                "hyperparameters, not both",
                field="hyperparameters",
            )
        return FullMethod(), inner or body.hyperparameters
    methods = training_methods()
    if kind not in methods:
        raise InvalidInput(
            f"method.type: {kind!r} is not a method here; Tuneserve fine-tunes encoders on "
            f"labelled rows: 'supervised' (full fine-tuning) or one of {methods}",
            field="method.type",
        )
    try:
        method = _MethodField.model_validate({"method": raw}).method
    except ValidationError as exc:
        raise invalid_input(exc, _MethodField, ()) from None
    return method, body.hyperparameters


def hyperparameters(hp: HyperparametersIn | None, *, default_learning_rate: float) -> Any:
    """Tuneserve's Hyperparameters for OpenAI's (and any of Tuneserve's own given beside them).

    Omitted values take the task's defaults; "auto" is Tuneserve's "auto"; a learning-rate
    multiplier multiplies the default learning rate of the task and method."""
    if hp is None:
        return Hyperparameters()
    out: dict[str, Any] = dict(hp.model_extra or {})
    if "epochs" in out:
        raise InvalidInput(
            "hyperparameters.epochs: OpenAI's name for it is n_epochs", field="hyperparameters"
        )
    if hp.n_epochs is not None:
        out["epochs"] = hp.n_epochs
    if hp.batch_size is not None:
        out["batch_size"] = hp.batch_size
    multiplier = hp.learning_rate_multiplier
    if isinstance(multiplier, int | float):
        if "learning_rate" in out:
            raise InvalidInput(
                "hyperparameters: give learning_rate_multiplier or learning_rate, not both",
                field="hyperparameters.learning_rate_multiplier",
            )
        rate = multiplier * default_learning_rate
        if rate > 1:
            raise InvalidInput(
                f"hyperparameters.learning_rate_multiplier: {multiplier:g} times the default "
                f"learning rate ({default_learning_rate:g}) is {rate:g}, above 1",
                field="hyperparameters.learning_rate_multiplier",
            )
        out["learning_rate"] = rate
    try:
        return Hyperparameters.model_validate(out)
    except ValidationError as exc:
        raise invalid_input(exc, Hyperparameters, ("hyperparameters",)) from None


# --- jobs out -------------------------------------------------------------------------------


def _unix(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _epochs(value: Any) -> int | float | Literal["auto"] | None:
    if value == "auto":
        return "auto"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int | float) else None


def hyperparameters_out(job: Job, facts: OpenAIJob | None) -> HyperparametersOut:
    """As resolved once training started, else as the spec stands ("auto" where asked)."""
    source = job.resolved_hyperparameters or (job.spec or {}).get("hyperparameters") or {}
    asked = ((facts.hyperparameters if facts else None) or {}).get("asked") or {}
    default = ((facts.hyperparameters if facts else None) or {}).get("default_learning_rate")
    rate = source.get("learning_rate")
    multiplier: float | Literal["auto"] | None = None
    if isinstance(rate, int | float) and isinstance(default, int | float) and default > 0:
        multiplier = round(rate / default, 6)
    elif asked.get("learning_rate_multiplier") == "auto" or rate == "auto":
        multiplier = "auto"
    batch = source.get("batch_size")
    return HyperparametersOut(
        n_epochs=_epochs(source.get("epochs")),
        batch_size="auto" if batch == "auto" else batch if isinstance(batch, int) else None,
        learning_rate_multiplier=multiplier,
    )


def job_object(job: Job, facts: OpenAIJob | None) -> FineTuningJob:
    """A Tuneserve job as OpenAI's fine_tuning.job (one from /v1/jobs names its datasets)."""
    spec = job.spec or {}
    hp = hyperparameters_out(job, facts)
    detail = job.progress_detail or {}
    eta = detail.get("eta_s")
    running = job.status == JobStatus.RUNNING and isinstance(eta, int | float)
    percent = detail.get("percent")
    return FineTuningJob(
        id=job.id,
        created_at=_unix(job.created_at) or 0,
        error=JobErrorOut(code=job.error_code, message=job.error_message or "")
        if job.error_code
        else None,
        fine_tuned_model=job.model_id,
        finished_at=_unix(job.finished_at),
        hyperparameters=hp,
        model=facts.model if facts else job.base_model,
        organization_id=job.tenant_id,
        result_files=[],
        seed=int(spec.get("seed", 0)),
        # Tuneserve's statuses are OpenAI's but one: a pruned sweep trial (never a job submitted
        # here) stopped early, as a cancelled job has.
        status=OPENAI_STATUS.get(job.status, job.status),  # type: ignore[arg-type]
        trained_tokens=None,
        training_file=facts.training_file if facts else job.train_dataset_id,
        validation_file=facts.validation_file if facts else job.validation_dataset_id,
        estimated_finish=int(time.time() + eta) if running and eta is not None else None,
        metadata=facts.job_metadata if facts else None,
        method=MethodOut(supervised=SupervisedOut(hyperparameters=hp)),
        tuneserve=TuneserveJobFacts(
            task=job.task,
            method=spec.get("method", {}),
            hyperparameters=job.resolved_hyperparameters or spec.get("hyperparameters", {}),
            train_dataset=job.train_dataset_id,
            validation_dataset=job.validation_dataset_id,
            suffix=facts.suffix if facts else None,
            metrics=job.metrics,
            warnings=[*(spec.get("warnings") or []), *(job.training_warnings or [])],
            progress_percent=float(percent) if isinstance(percent, int | float) else 0.0,
        ),
    )


# --- events and checkpoints -----------------------------------------------------------------


def event_id(value: str) -> int:
    """The number in an event id ("ftevent-12", or "12"); BadRequest naming `after` otherwise."""
    digits = value.removeprefix(EVENT_PREFIX)
    if not digits.isascii() or not digits.isdigit() or len(digits) > 9:
        raise BadRequest(f"after: not an event id: '{value[:40]}'", field="after")
    return int(digits)


def _metrics_data(data: dict[str, Any]) -> dict[str, Any]:
    """A metrics event's data in OpenAI's names: step, train_loss, valid_loss (and the rest)."""
    out: dict[str, Any] = {"step": data.get("step"), "epoch": data.get("epoch")}
    if data.get("kind") == "train":
        out |= {
            "train_loss": data.get("loss"),
            "total_steps": data.get("total"),
            "learning_rate": data.get("learning_rate"),
        }
        return out
    for key, value in data.items():
        if key == "eval_loss":
            out["valid_loss"] = out["full_valid_loss"] = value
        elif key not in ("kind", "step", "epoch") and isinstance(value, int | float):
            out[f"valid_{key}"] = value
    return out


def event_object(event: JobEvent) -> JobEventOut:
    data = event.data or None
    failed = event.type == EventType.STATUS and (data or {}).get("status") == JobStatus.FAILED
    level: Literal["info", "warn", "error"] = (
        "error" if failed else "warn" if event.type == EventType.WARNING else "info"
    )
    metrics = event.type == EventType.METRICS
    return JobEventOut(
        id=f"{EVENT_PREFIX}{event.id}",
        created_at=_unix(event.created_at) or 0,
        level=level,
        message=event.message,
        type="metrics" if metrics else "message",
        data=_metrics_data(data) if metrics and data else data,
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def running_checkpoint(job: Job, checkpoint: CheckpointRead) -> CheckpointOut:
    """A resumable checkpoint of a job that has not ended (not a servable model)."""
    loss = _number(checkpoint.metrics.get("eval_loss"))
    return CheckpointOut(
        id=f"ftckpt-{job.id}-{checkpoint.step}",
        created_at=_unix(checkpoint.saved_at) or 0,
        fine_tuned_model_checkpoint=f"{job.id}:checkpoint-{checkpoint.step}",
        fine_tuning_job_id=job.id,
        metrics=CheckpointMetrics(step=checkpoint.step, valid_loss=loss, full_valid_loss=loss),
        step_number=checkpoint.step,
    )


def final_checkpoint(job: Job, model: Model) -> CheckpointOut:
    """A succeeded job's registered model, the checkpoint it kept."""
    loss = _number((model.metrics or {}).get("eval_loss"))
    return CheckpointOut(
        id=f"ftckpt-{model.id}",
        created_at=_unix(model.created_at) or 0,
        fine_tuned_model_checkpoint=model.id,
        fine_tuning_job_id=job.id,
        metrics=CheckpointMetrics(
            step=job.progress_step,
            train_loss=job.train_loss,
            valid_loss=loss,
            full_valid_loss=loss,
        ),
        step_number=job.progress_step,
    )
