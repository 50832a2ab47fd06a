"""/ui/jobs: every job with its progress; one job's curves and log; cancel; submit from a form."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.schemas import Scope
from app.core.deps import QueueDep, SessionDep, SettingsDep
from app.core.errors import ServiceError
from app.core.validation import plain_errors
from app.db.models import EventType, Job, JobEvent, JobStatus
from app.job import service, stream
from app.job.schemas import JobCreate, JobRead
from app.ml.methods import DEFAULT_METHOD
from app.ml.tasks import REGISTRY
from app.ui.web import (
    UiRefused,
    UiRoute,
    UserDep,
    posted_form,
    redirect,
    render,
    require_scope,
    require_section,
)

router = APIRouter(prefix="/jobs", route_class=UiRoute)

# The events shown under "log" on a job's page (the newest; training steps are drawn instead).
LOG_TAIL = 60
# Points of each curve sent with the page; a longer run is thinned evenly (the last one kept).
CURVE_POINTS = 2000


def list_rows(session: Session, tenant: str, status: str | None, task: str | None) -> list[JobRead]:
    stmt = select(Job).where(Job.tenant_id == tenant)
    if status:
        stmt = stmt.where(Job.status == status)
    if task:
        stmt = stmt.where(Job.task == task)
    rows = session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(200))
    return [JobRead.from_row(j) for j in rows]


@dataclass(frozen=True)
class JobFilters:
    """The list's filters; an empty value filters nothing."""

    status: str | None
    task: str | None


def job_filters(
    status: Annotated[str | None, Query(max_length=20)] = None,
    task: Annotated[str | None, Query(max_length=40)] = None,
) -> JobFilters:
    return JobFilters(status or None, task or None)


FiltersDep = Annotated[JobFilters, Depends(job_filters)]


@router.get("", include_in_schema=False)
def jobs_page(request: Request, session: SessionDep, user: UserDep, chosen: FiltersDep) -> Response:
    require_section(user, "jobs")
    jobs = list_rows(session, user.principal.tenant, chosen.status, chosen.task)
    return render(
        request,
        "jobs.html",
        {
            "jobs": jobs,
            "status": chosen.status or "",
            "task": chosen.task or "",
            "statuses": [s.value for s in JobStatus],
            "tasks": sorted(REGISTRY),
        },
    )


@router.get("/rows", include_in_schema=False)
def jobs_rows(request: Request, session: SessionDep, user: UserDep, chosen: FiltersDep) -> Response:
    """The table body alone, for the page's script to refresh while jobs run."""
    require_section(user, "jobs")
    jobs = list_rows(session, user.principal.tenant, chosen.status, chosen.task)
    return render(request, "_job_rows.html", {"jobs": jobs})


def curves(session: Session, job_id: str) -> dict[str, Any]:
    """Training points (step, loss, learning rate, samples/s) and evaluations, for the charts."""
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == EventType.METRICS)
        .order_by(JobEvent.id)
    )
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    last_id = 0
    for event in rows:
        last_id = event.id
        data = event.data or {}
        if data.get("kind") == "train":
            train.append(
                {k: data.get(k) for k in ("step", "loss", "learning_rate", "samples_per_second")}
            )
        elif data.get("kind") == "eval":
            evals.append({k: v for k, v in data.items() if isinstance(v, int | float)})
    # The page's live stream goes on after the newest event of any kind the page shows.
    newest = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id))
    last_id = max(last_id, newest or 0)
    if len(train) > CURVE_POINTS:
        stride = len(train) / CURVE_POINTS
        train = [train[int(i * stride)] for i in range(CURVE_POINTS - 1)] + [train[-1]]
    return {"train": train, "eval": evals, "last_event_id": last_id}


@router.get("/{job_id}", include_in_schema=False)
def job_page(
    job_id: str, request: Request, session: SessionDep, settings: SettingsDep, user: UserDep
) -> Response:
    require_section(user, "jobs")
    tenant = user.principal.tenant
    job = JobRead.from_row(service.get_job(session, tenant=tenant, job_id=job_id))
    log = list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id)
            .where(JobEvent.type != EventType.METRICS)
            .order_by(JobEvent.id.desc())
            .limit(LOG_TAIL)
        )
    )[::-1]
    checkpoints = service.list_checkpoints(session, settings=settings, tenant=tenant, job_id=job_id)
    return render(
        request,
        "job.html",
        {
            "job": job,
            "log": log,
            "checkpoints": checkpoints,
            "curves": curves(session, job_id),
            "ended": JobStatus(job.status).is_terminal,
            "can_cancel": user.principal.allows(Scope.TRAIN),
            "primary": REGISTRY[job.task].primary_metric,
        },
    )


@router.get("/{job_id}/events", include_in_schema=False)
def job_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    user: UserDep,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
) -> StreamingResponse:
    """The job's events as Server-Sent Events, for the page's live curves and progress."""
    require_section(user, "jobs")
    service.get_job(session, tenant=user.principal.tenant, job_id=job_id)
    session.close()
    return stream.response(request, job_id=job_id, after=after, maximum=2**31 - 1)


@router.post("/{job_id}/cancel", include_in_schema=False)
async def cancel(job_id: str, request: Request, session: SessionDep, user: UserDep) -> Response:
    await posted_form(request, user)
    require_scope(user, Scope.TRAIN, doing="cancel jobs")
    service.cancel_job(session, tenant=user.principal.tenant, job_id=job_id)
    return redirect(f"/ui/jobs/{job_id}")


def spec_from_form(form: dict[str, str]) -> JobCreate:
    """A job spec from the submit form: fields left empty take the service's defaults."""
    hp: dict[str, Any] = {}
    for name in ("epochs", "learning_rate", "batch_size", "max_length"):
        raw = form.get(name, "").strip()
        if raw:
            try:
                hp[name] = json.loads(raw)
            except json.JSONDecodeError:
                hp[name] = raw  # validation names the field and the value
    body: dict[str, Any] = {
        "task": form.get("task", ""),
        "base_model": form.get("base_model", ""),
        "train_dataset": form.get("train_dataset", ""),
        "method": {"type": form.get("method") or DEFAULT_METHOD},
        "hyperparameters": hp,
    }
    if form.get("validation_dataset"):
        body["validation_dataset"] = form["validation_dataset"]
    try:
        return JobCreate.model_validate(body)
    except ValidationError as exc:
        problems = plain_errors(exc.errors(), root=JobCreate)
        raise UiRefused(422, "Job not submitted", "; ".join(p.message for p in problems)) from None


@router.post("", include_in_schema=False)
async def submit(
    request: Request, session: SessionDep, settings: SettingsDep, queue: QueueDep, user: UserDep
) -> Response:
    form = await posted_form(request, user)
    require_scope(user, Scope.TRAIN, doing="submit jobs")
    spec = spec_from_form(form)
    try:
        job = service.submit_job(
            session,
            settings=settings,
            queue=queue,
            tenant=user.principal.tenant,
            spec=spec,
            idempotency=None,
        )
    except ServiceError as exc:
        if exc.status_code >= 500:
            raise
        raise UiRefused(exc.status_code, "Job not submitted", exc.message) from None
    return redirect(f"/ui/jobs/{job.id}")
