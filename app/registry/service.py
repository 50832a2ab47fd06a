"""Reads of the model registry. Models are registered by the worker when a job succeeds."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, NotFound
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.db.models import Model
from app.db.session import get_by_id
from app.ml.tasks import REGISTRY


def get_model(session: Session, *, tenant: str, model_id: str) -> Model:
    """The tenant's registered model, or NotFound (also for another tenant's)."""
    model = get_by_id(session, Model, model_id)
    if model is None or model.tenant_id != tenant:
        raise NotFound(f"model '{model_id}' does not exist", field="model")
    return model


def get_model_for_task(session: Session, *, tenant: str, model_id: str, task: str) -> Model:
    """The tenant's model, which must serve `task` (422 otherwise)."""
    model = get_model(session, tenant=tenant, model_id=model_id)
    if model.task != task:
        raise InvalidInput(
            f"model '{model_id}' is a '{model.task}' model; it cannot serve '{task}'",
            field="model",
        )
    return model


def list_models(
    session: Session, *, tenant: str, limit: int, after: str | None, task: str | None = None
) -> tuple[list[Model], str | None]:
    """The tenant's registered models, newest first."""
    stmt = select(Model).where(Model.tenant_id == tenant)
    if task is not None:
        if task not in REGISTRY:
            raise InvalidInput(
                f"task: unknown task '{task[:40]}'; expected one of {sorted(REGISTRY)}",
                field="task",
            )
        stmt = stmt.where(Model.task == task)
    return page_newest_first(session, stmt, Model, limit=min(limit, MAX_LIMIT), after=after)
