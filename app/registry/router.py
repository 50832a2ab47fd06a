"""/v1/models: the registry of fine-tuned models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth.deps import ModelReader
from app.core.deps import SessionDep
from app.core.schemas import PROTECTED, Page, error_responses
from app.db.models import Model
from app.registry import service
from app.registry.schemas import ModelRead

router = APIRouter(prefix="/models", tags=["models"], responses=PROTECTED)


def to_read(model: Model) -> ModelRead:
    return ModelRead(
        id=model.id,
        task=model.task,
        base_model=model.base_model,
        method=model.method,
        artifact=model.artifact,  # type: ignore[arg-type]  # pydantic checks the value
        label_names=list(model.label_names),
        metrics=model.metrics or {},
        hyperparameters=model.hyperparameters or {},
        job_id=model.job_id,
        train_dataset=model.train_dataset_id,
        validation_dataset=model.validation_dataset_id,
        size_bytes=model.size_bytes,
        created_at=model.created_at,
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
    return Page[ModelRead](data=[to_read(m) for m in rows], next_cursor=cursor)


@router.get("/{model_id}", response_model=ModelRead, responses=error_responses(404))
def get_model(model_id: str, session: SessionDep, principal: ModelReader) -> ModelRead:
    """A registered model: task, base, method, labels, metrics and provenance."""
    return to_read(service.get_model(session, tenant=principal.tenant, model_id=model_id))
