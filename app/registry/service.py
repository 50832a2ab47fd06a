"""Reads of the model registry. Models are registered by the worker when a job succeeds."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, NotFound
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.db.models import Model


def get_model(session: Session, *, model_id: str) -> Model:
    """The registered model, or NotFound."""
    model = session.get(Model, model_id)
    if model is None:
        raise NotFound(f"model '{model_id}' does not exist", field="model")
    return model


def get_model_for_task(session: Session, *, model_id: str, task: str) -> Model:
    """The model, which must serve `task` (422 otherwise)."""
    model = get_model(session, model_id=model_id)
    if model.task != task:
        raise InvalidInput(
            f"model '{model_id}' is a '{model.task}' model; it cannot serve '{task}'",
            field="model",
        )
    return model


def list_models(
    session: Session, *, limit: int, after: str | None, task: str | None = None
) -> tuple[list[Model], str | None]:
    """Registered models, newest first."""
    stmt = select(Model)
    if task is not None:
        stmt = stmt.where(Model.task == task)
    return page_newest_first(session, stmt, Model, limit=min(limit, MAX_LIMIT), after=after)
