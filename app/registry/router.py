"""/v1/models: the registry of fine-tuned models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.deps import ModelReader, Trainer
from app.core.deps import SessionDep, SettingsDep
from app.core.schemas import PROTECTED, ErrorResponse, Page, ParameterCounts, error_responses
from app.db.models import Model, ModelAlias
from app.ml.quality import Quality
from app.ml.runtimes import runtime_of
from app.registry import aliases, deletion, download, service
from app.registry.schemas import AliasPut, AliasRead, ModelRead

router = APIRouter(prefix="/models", tags=["models"], responses=PROTECTED)
alias_router = APIRouter(prefix="/aliases", tags=["models"], responses=PROTECTED)


# Documented here rather than by a response class with a media type: FastAPI would give that media
# type to the error responses too, which are JSON.
ARCHIVE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A tar.gz of the model's files under one folder named after its id.",
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
    },
    507: {"model": ErrorResponse, "description": "Not enough free disk space to pack the model."},
}


def _aliases_by_model(session: Session, models: list[Model]) -> dict[str, list[str]]:
    if not models:
        return {}
    stmt = (
        select(ModelAlias.model_id, ModelAlias.name)
        .where(
            ModelAlias.tenant_id == models[0].tenant_id,
            ModelAlias.model_id.in_([m.id for m in models]),
        )
        .order_by(ModelAlias.name)
    )
    found: dict[str, list[str]] = {}
    for model_id, name in session.execute(stmt):
        found.setdefault(model_id, []).append(name)
    return found


def to_read(model: Model, names: list[str] | None = None) -> ModelRead:
    return ModelRead(
        id=model.id,
        task=model.task,
        base_model=model.base_model,
        parent_model=model.parent_model_id,
        method=model.method,
        artifact=model.artifact,  # type: ignore[arg-type]  # pydantic checks the value
        runtime=runtime_of(model.artifact),  # type: ignore[arg-type]
        label_names=list(model.label_names),
        metrics=model.metrics or {},
        parent_metrics=model.parent_metrics,
        baseline_metrics=model.baseline_metrics,
        quality=Quality(model.quality) if model.quality else None,
        hyperparameters=model.hyperparameters or {},
        job_id=model.job_id,
        train_dataset=model.train_dataset_id,
        validation_dataset=model.validation_dataset_id,
        size_bytes=model.size_bytes,
        parameters=ParameterCounts.model_validate(model.parameters) if model.parameters else None,
        aliases=names or [],
        created_at=model.created_at,
    )


def alias_read(alias: ModelAlias) -> AliasRead:
    return AliasRead(
        name=alias.name,
        model=alias.model_id,
        previous_model=alias.previous_model_id,
        created_at=alias.created_at,
        updated_at=alias.updated_at,
    )


@router.get("", response_model=Page[ModelRead])
def list_models(
    session: SessionDep,
    principal: ModelReader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    task: str | None = None,
) -> Page[ModelRead]:
    """List registered models, newest first."""
    rows, cursor = service.list_models(
        session, tenant=principal.tenant, limit=limit, after=after, task=task
    )
    names = _aliases_by_model(session, rows)
    return Page[ModelRead](data=[to_read(m, names.get(m.id)) for m in rows], next_cursor=cursor)


@router.get("/{model_id}", response_model=ModelRead, responses=error_responses(404))
def get_model(model_id: str, session: SessionDep, principal: ModelReader) -> ModelRead:
    """A registered model: task, base, method, labels, metrics and provenance."""
    model = service.get_model(session, tenant=principal.tenant, model_id=model_id)
    return to_read(model, aliases.aliases_of(session, model))


@router.get(
    "/{model_id}/download",
    response_class=StreamingResponse,
    responses={**ARCHIVE_RESPONSE, **error_responses(404, 409)},
)
def download_model(
    model_id: str, session: SessionDep, settings: SettingsDep, principal: ModelReader
) -> StreamingResponse:
    """The model's files as a tar.gz that transformers, peft or ONNX Runtime load alone."""
    archive = download.archive_model(
        session, settings=settings, tenant=principal.tenant, model_id=model_id
    )
    headers = {
        "Content-Disposition": f'attachment; filename="{archive.filename}"',
        "Content-Length": str(archive.size),
    }
    return StreamingResponse(archive.chunks(), media_type="application/gzip", headers=headers)


@router.delete(
    "/{model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 409)
)
def delete_model(
    model_id: str, request: Request, session: SessionDep, settings: SettingsDep, principal: Trainer
) -> Response:
    """Delete a model and its files; 409 while an alias, an active job or a model needs it."""
    model = deletion.delete_model(
        session, settings=settings, tenant=principal.tenant, model_id=model_id
    )
    # /predict forgets it at once: no cached lookup, no loaded predictor.
    request.app.state.model_refs.clear()
    request.app.state.predictors.evict(model.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{model_id}/aliases/{name}",
    response_model=AliasRead,
    responses=error_responses(400, 404, 409, 422),
)
def put_alias(
    model_id: str,
    name: str,
    request: Request,
    session: SessionDep,
    principal: Trainer,
    body: AliasPut | None = None,
) -> AliasRead:
    """Point an alias at this model, creating it or moving it from another model at once.

    /predict accepts the alias wherever it accepts a model id, so callers that name `production`
    follow each move; `previous_model` tells which model to move it back to. A model whose
    `quality` is `no_better_than_baseline` is refused with 409 `model_below_baseline`, naming its
    metric and the baseline's, unless the optional body says `{"force": true}`.
    """
    alias, _ = aliases.set_alias(
        session,
        tenant=principal.tenant,
        model_id=model_id,
        name=name,
        force=body is not None and body.force,
    )
    request.app.state.model_refs.clear()  # /predict follows the move at once
    return alias_read(alias)


@alias_router.get("", response_model=Page[AliasRead])
def list_aliases(session: SessionDep, principal: ModelReader) -> Page[AliasRead]:
    """Every alias of the tenant, by name."""
    rows = aliases.list_aliases(session, tenant=principal.tenant)
    return Page[AliasRead](data=[alias_read(a) for a in rows])


@alias_router.get("/{name}", response_model=AliasRead, responses=error_responses(404))
def get_alias(name: str, session: SessionDep, principal: ModelReader) -> AliasRead:
    """Which model an alias points at."""
    return alias_read(aliases.get_alias(session, tenant=principal.tenant, name=name))


@alias_router.delete("/{name}", response_model=AliasRead, responses=error_responses(404))
def delete_alias(name: str, request: Request, session: SessionDep, principal: Trainer) -> AliasRead:
    """Remove an alias; requests naming it get 404 from then on. The model stays."""
    alias = aliases.delete_alias(session, tenant=principal.tenant, name=name)
    request.app.state.model_refs.clear()
    return alias_read(alias)
