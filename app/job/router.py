"""/v1/jobs: submit, follow and cancel fine-tuning jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.auth.deps import JobReader, Trainer
from app.core.deps import QueueDep, SessionDep, SettingsDep
from app.core.idempotency import (
    REPLAYED_RESPONSE_HEADER,
    IdempotencyKey,
    canonical_hash,
    idempotent_request,
)
from app.core.schemas import PROTECTED, Page, error_responses
from app.db.models import JobEvent
from app.job import deletion, service, stream
from app.job.schemas import CheckpointRead, JobCreate, JobEventRead, JobRead

# Event ids are 32-bit integers on PostgreSQL; a larger `after` would overflow the query.
MAX_EVENT_ID = 2**31 - 1

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=PROTECTED)


def _event_read(event: JobEvent) -> JobEventRead:
    return JobEventRead(
        id=event.id,
        type=event.type,
        message=event.message,
        data=event.data,
        created_at=event.created_at,
    )


class EventPage(Page[JobEventRead]):
    # For events the cursor is the last event id; pass it back as `after`.
    pass


CREATE_ROUTE = "POST /v1/jobs"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead,
    responses={
        **error_responses(400, 413),
        201: {"description": "The job, queued.", "headers": REPLAYED_RESPONSE_HEADER},
    },
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    principal: Trainer,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Submit a fine-tuning job; it starts as `queued`."""
    idempotency = idempotent_request(
        idempotency_key,
        tenant=principal.tenant,
        route=CREATE_ROUTE,
        # What the client sent (fields it left out stay out), as canonical JSON.
        request_hash=canonical_hash(body.model_dump(mode="json", exclude_unset=True)),
    )
    job = service.submit_job(
        session,
        settings=settings,
        queue=queue,
        tenant=principal.tenant,
        spec=body,
        idempotency=idempotency,
    )
    return JobRead.from_row(job)


@router.get("", response_model=Page[JobRead])
def list_jobs(
    session: SessionDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    status: str | None = None,
    sweep_id: Annotated[str | None, Query(max_length=40)] = None,
) -> Page[JobRead]:
    """List jobs, newest first; with `sweep_id`, that sweep's trials."""
    rows, cursor = service.list_jobs(
        session, tenant=principal.tenant, limit=limit, after=after, status=status, sweep_id=sweep_id
    )
    return Page[JobRead](data=[JobRead.from_row(j) for j in rows], next_cursor=cursor)


@router.get("/{job_id}", response_model=JobRead, responses=error_responses(404))
def get_job(job_id: str, session: SessionDep, principal: JobReader) -> JobRead:
    """A job's status, progress, metrics and result."""
    return JobRead.from_row(service.get_job(session, tenant=principal.tenant, job_id=job_id))


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    responses={
        **error_responses(400, 404),
        200: {
            "description": "A page of events; with `Accept: text/event-stream`, a live stream.",
            "content": {stream.EVENT_STREAM: {"schema": {"type": "string"}}},
        },
    },
)
def list_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventPage | StreamingResponse:
    """A job's events (status changes, log lines, metrics), oldest first.

    With `Accept: text/event-stream` the events stream as Server-Sent Events (`id` the event id,
    `event` its type, `data` the event's JSON) until the job ends, then one `end` event carries
    its final status. A reconnecting client sends `Last-Event-ID` to go on after that event."""
    if stream.wants_event_stream(accept):
        stream.parse_last_event_id(last_event_id, maximum=MAX_EVENT_ID)  # 400 before the 404
        service.get_job(session, tenant=principal.tenant, job_id=job_id)  # 404 before streaming
        session.close()
        return stream.response(request, job_id=job_id, after=after, maximum=MAX_EVENT_ID)
    rows, next_after = service.list_events(
        session, tenant=principal.tenant, job_id=job_id, limit=limit, after=after
    )
    return EventPage(
        data=[_event_read(e) for e in rows],
        next_cursor=str(next_after) if next_after is not None else None,
    )


@router.get(
    "/{job_id}/checkpoints", response_model=Page[CheckpointRead], responses=error_responses(404)
)
def list_checkpoints(
    job_id: str, session: SessionDep, settings: SettingsDep, principal: JobReader
) -> Page[CheckpointRead]:
    """A running or re-queued job's resumable checkpoints with their step and metrics."""
    rows = service.list_checkpoints(
        session, settings=settings, tenant=principal.tenant, job_id=job_id
    )
    return Page[CheckpointRead](data=rows)


@router.post("/{job_id}/cancel", response_model=JobRead, responses=error_responses(404, 409))
def cancel_job(job_id: str, session: SessionDep, principal: Trainer) -> JobRead:
    """Cancel a job: a queued one never runs; a running one stops within seconds."""
    return JobRead.from_row(service.cancel_job(session, tenant=principal.tenant, job_id=job_id))


@router.delete(
    "/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409)
)
def delete_job(
    job_id: str, session: SessionDep, settings: SettingsDep, principal: Trainer
) -> Response:
    """Delete an ended job with its events and checkpoints; the model it registered stays."""
    deletion.delete_job(session, settings=settings, tenant=principal.tenant, job_id=job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
