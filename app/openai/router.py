"""/openai/v1: OpenAI's files, fine-tuning jobs and models routes over Tuneserve's services, so
that the official SDKs work with nothing but `base_url` and `api_key`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth.deps import DataReader, DataWriter, JobReader, ModelReader, Trainer
from app.basemodel.service import list_base_models
from app.core.config import Settings
from app.core.deps import QueueDep, SessionDep, SettingsDep
from app.core.errors import Forbidden, NotFound
from app.core.idempotency import (
    REPLAYED_HEADER,
    REPLAYED_RESPONSE_HEADER,
    IdempotencyKey,
    Replay,
    canonical_hash,
    idempotent_request,
)
from app.dataset.router import upload_hash
from app.dataset.upload import FILE_FIELD, receive_upload
from app.db.models import Job, Model
from app.job import service as job_service
from app.openai import files, jobs, translate
from app.openai.errors import PROTECTED, error_responses
from app.openai.schemas import (
    CheckpointList,
    Deleted,
    EventList,
    FileList,
    FileObject,
    FineTuningJob,
    FineTuningJobCreate,
    JobList,
    ModelList,
    ModelObject,
)
from app.registry import deletion
from app.registry.service import resolve_model_ref

router = APIRouter(tags=["openai"], responses=PROTECTED)
FILES_ROUTE = "POST /openai/v1/files"
JOBS_ROUTE = "POST /openai/v1/fine_tuning/jobs"
METADATA_QUERY = "metadata["

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, "purpose"],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": [files.PURPOSE]},
                    },
                }
            }
        },
    }
}


# --- files ----------------------------------------------------------------------------------


@router.post(
    "/files",
    response_model=FileObject,
    openapi_extra=_UPLOAD_BODY,
    responses={
        **error_responses(404, 413, 415),
        200: {"description": "The file, kept.", "headers": REPLAYED_RESPONSE_HEADER},
    },
)
async def upload_file(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: DataWriter,
    idempotency_key: IdempotencyKey = None,
) -> FileObject:
    """Upload a training file (purpose fine-tune); it is parsed when a job trains on it."""
    upload = await receive_upload(request, settings=settings)
    try:
        idempotency = idempotent_request(
            idempotency_key,
            tenant=principal.tenant,
            route=FILES_ROUTE,
            request_hash=upload_hash(upload),
        )
        row = await run_in_threadpool(
            files.create_file,
            session,
            settings=settings,
            tenant=principal.tenant,
            upload=upload,
            idempotency=idempotency,
        )
    finally:
        upload.discard()
    return files.file_object(row)


@router.get("/files", response_model=FileList)
def list_files(
    session: SessionDep,
    principal: DataReader,
    purpose: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> FileList:
    """List the uploaded files, newest first (order=asc: oldest first)."""
    rows, more = files.list_files(
        session,
        tenant=principal.tenant,
        limit=limit,
        after=after,
        ascending=order == "asc",
        purpose=purpose,
    )
    data = [files.file_object(r) for r in rows]
    return FileList(
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/files/{file_id}", response_model=FileObject, responses=error_responses(404))
def get_file(file_id: str, session: SessionDep, principal: DataReader) -> FileObject:
    """A file's size, name and purpose."""
    return files.file_object(files.get_file(session, tenant=principal.tenant, file_id=file_id))


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The file's bytes, as uploaded.",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(404),
    },
)
def get_file_content(
    file_id: str, session: SessionDep, settings: SettingsDep, principal: DataReader
) -> FileResponse:
    """The file's bytes, as uploaded."""
    row = files.get_file(session, tenant=principal.tenant, file_id=file_id)
    return FileResponse(files.content_path(settings, row), media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=Deleted, responses=error_responses(404))
def delete_file(
    file_id: str, session: SessionDep, settings: SettingsDep, principal: DataWriter
) -> Deleted:
    """Delete a file; the datasets parsed from it stay with the jobs that trained on them."""
    files.delete_file(session, settings=settings, tenant=principal.tenant, file_id=file_id)
    return Deleted(id=file_id, object="file")


# --- fine-tuning jobs -----------------------------------------------------------------------


def _job_object(session: Session, job: Job) -> FineTuningJob:
    return translate.job_object(job, jobs.facts_of(session, [job.id]).get(job.id))


@router.post(
    "/fine_tuning/jobs",
    response_model=FineTuningJob,
    responses={
        **error_responses(409, 413),
        200: {"description": "The job, queued.", "headers": REPLAYED_RESPONSE_HEADER},
    },
)
def create_job(
    body: FineTuningJobCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    principal: Trainer,
    idempotency_key: IdempotencyKey = None,
) -> FineTuningJob | JSONResponse:
    """Create a fine-tuning job from an uploaded file; it starts as `queued`."""
    idempotency = idempotent_request(
        idempotency_key,
        tenant=principal.tenant,
        route=JOBS_ROUTE,
        request_hash=canonical_hash(body.model_dump(mode="json", exclude_unset=True)),
    )
    try:
        job = jobs.create_job(
            session,
            settings=settings,
            queue=queue,
            tenant=principal.tenant,
            body=body,
            idempotency=idempotency,
        )
    except Replay as replay:
        # The first request's job as it is now, in OpenAI's shape.
        session.rollback()
        first = job_service.get_job(session, tenant=principal.tenant, job_id=replay.body["id"])
        content = _job_object(session, first).model_dump(mode="json")
        return JSONResponse(content, headers={REPLAYED_HEADER: "true"})
    return _job_object(session, job)


@router.get("/fine_tuning/jobs", response_model=JobList)
def list_jobs(
    request: Request,
    session: SessionDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> JobList:
    """List fine-tuning jobs, newest first; `metadata[key]=value` (repeatable) keeps the jobs
    with those metadata pairs."""
    wanted = {
        name[len(METADATA_QUERY) : -1]: value
        for name, value in request.query_params.multi_items()
        if name.startswith(METADATA_QUERY) and name.endswith("]")
    }
    rows, more = jobs.list_jobs(
        session, tenant=principal.tenant, limit=limit, after=after, metadata=wanted
    )
    facts = jobs.facts_of(session, [j.id for j in rows])
    return JobList(data=[translate.job_object(j, facts.get(j.id)) for j in rows], has_more=more)


@router.get(
    "/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, responses=error_responses(404)
)
def get_job(job_id: str, session: SessionDep, principal: JobReader) -> FineTuningJob:
    """A fine-tuning job's status, hyperparameters and result."""
    return _job_object(
        session, job_service.get_job(session, tenant=principal.tenant, job_id=job_id)
    )


@router.post(
    "/fine_tuning/jobs/{job_id}/cancel",
    response_model=FineTuningJob,
    responses=error_responses(404, 409),
)
def cancel_job(job_id: str, session: SessionDep, principal: Trainer) -> FineTuningJob:
    """Cancel a job: a queued one never runs; a running one stops within seconds."""
    job = job_service.cancel_job(session, tenant=principal.tenant, job_id=job_id)
    return _job_object(session, job)


@router.get(
    "/fine_tuning/jobs/{job_id}/events", response_model=EventList, responses=error_responses(404)
)
def list_events(
    job_id: str,
    session: SessionDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after: Annotated[str | None, Query(min_length=1, max_length=40)] = None,
) -> EventList:
    """A job's events, newest first: status changes, messages, and `metrics` events with the
    step, train_loss and valid_loss."""
    rows, more = jobs.list_events(
        session, tenant=principal.tenant, job_id=job_id, limit=limit, after=after
    )
    return EventList(data=[translate.event_object(e) for e in rows], has_more=more)


@router.get(
    "/fine_tuning/jobs/{job_id}/checkpoints",
    response_model=CheckpointList,
    responses=error_responses(404),
)
def list_checkpoints(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    after: Annotated[str | None, Query(min_length=1, max_length=120)] = None,
) -> CheckpointList:
    """A succeeded job's final checkpoint (its registered model), or a running job's
    resumable checkpoints, newest first."""
    found = jobs.list_checkpoints(
        session, settings=settings, tenant=principal.tenant, job_id=job_id
    )
    data, more = jobs.page_after(found, after=after, limit=limit)
    return CheckpointList(
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


# --- models ---------------------------------------------------------------------------------


def _registered(model: Model) -> ModelObject:
    return ModelObject(
        id=model.id,
        created=int(model.created_at.timestamp()),
        owned_by=model.tenant_id,
        task=model.task,
    )


def _base(model_id: str) -> ModelObject:
    return ModelObject(id=model_id, created=0, owned_by=translate.OWNER)


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep, principal: ModelReader) -> ModelList:
    """The base models a job can fine-tune, then the tenant's registered models, newest first."""
    bases = [_base(b.id) for b in list_base_models(settings) if b.available]
    registered = session.scalars(
        select(Model)
        .where(Model.tenant_id == principal.tenant)
        .order_by(Model.created_at.desc(), Model.id.desc())
    )
    return ModelList(data=[*bases, *(_registered(m) for m in registered)])


def _lookup(session: Session, settings: Settings, tenant: str, model_id: str) -> Model | str:
    """The tenant's registered model (by id or alias), or the id of a base model."""
    try:
        return resolve_model_ref(session, tenant=tenant, ref=model_id)
    except NotFound:
        if any(b.id == model_id for b in list_base_models(settings) if b.available):
            return model_id
        raise NotFound(f"the model '{model_id[:100]}' does not exist", field="model") from None


@router.get("/models/{model_id:path}", response_model=ModelObject, responses=error_responses(404))
def get_model(
    model_id: str, session: SessionDep, settings: SettingsDep, principal: ModelReader
) -> ModelObject:
    """A base model or a registered model (by id or alias)."""
    found = _lookup(session, settings, principal.tenant, model_id)
    return _base(found) if isinstance(found, str) else _registered(found)


@router.delete(
    "/models/{model_id:path}", response_model=Deleted, responses=error_responses(404, 409)
)
def delete_model(
    model_id: str, request: Request, session: SessionDep, settings: SettingsDep, principal: Trainer
) -> Deleted:
    """Delete a registered model and its files (409 while an alias, active job or model needs
    it); base models cannot be deleted (403)."""
    found = _lookup(session, settings, principal.tenant, model_id)
    if isinstance(found, str):
        raise Forbidden(
            f"'{found}' is a base model of this server; it cannot be deleted",
            code="base_model",
            field="model",
        )
    model = deletion.delete_model(
        session, settings=settings, tenant=principal.tenant, model_id=found.id
    )
    request.app.state.model_refs.clear()
    request.app.state.predictors.evict(model.id)
    return Deleted(id=model_id, object="model")
