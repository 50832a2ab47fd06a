"""/v1/sweeps: hyperparameter sweeps whose trials are ordinary jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.auth.deps import JobReader, Trainer
from app.core.deps import QueueDep, SessionDep, SettingsDep
from app.core.schemas import PROTECTED, Page, error_responses
from app.sweep import service
from app.sweep.schemas import SweepCreate, SweepRead

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=PROTECTED)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepRead,
    responses={**error_responses(400, 413, 429), 201: {"description": "The sweep, running."}},
)
def create_sweep(
    body: SweepCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    principal: Trainer,
) -> SweepRead:
    """Start a hyperparameter sweep: a job spec with search spaces; its trials are jobs."""
    sweep = service.create_sweep(
        session, settings=settings, queue=queue, tenant=principal.tenant, body=body
    )
    return service.sweep_read(session, sweep)


@router.get("", response_model=Page[SweepRead])
def list_sweeps(
    session: SessionDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> Page[SweepRead]:
    """List sweeps, newest first."""
    rows, cursor = service.list_sweeps(session, tenant=principal.tenant, limit=limit, after=after)
    return Page[SweepRead](data=[service.sweep_read(session, s) for s in rows], next_cursor=cursor)


@router.get("/{sweep_id}", response_model=SweepRead, responses=error_responses(404))
def get_sweep(sweep_id: str, session: SessionDep, principal: JobReader) -> SweepRead:
    """A sweep's status, its trials (parameters, metric, status, duration) and the best."""
    sweep = service.get_sweep(session, tenant=principal.tenant, sweep_id=sweep_id)
    return service.sweep_read(session, sweep)


@router.post("/{sweep_id}/cancel", response_model=SweepRead, responses=error_responses(404, 409))
def cancel_sweep(
    sweep_id: str, session: SessionDep, settings: SettingsDep, queue: QueueDep, principal: Trainer
) -> SweepRead:
    """Cancel a sweep: no trial starts any more and its queued and running trials stop."""
    sweep = service.cancel_sweep(
        session, settings=settings, queue=queue, tenant=principal.tenant, sweep_id=sweep_id
    )
    return service.sweep_read(session, sweep)
