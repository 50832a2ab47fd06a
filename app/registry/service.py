"""Reads of the model registry. Models are registered by the worker when a job succeeds."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput, NotFound
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.db.models import Model, ModelAlias
from app.db.session import get_by_id
from app.ml.tasks import REGISTRY

# Alias names: letters, digits, '.', '_' and '-', starting with a letter; `mdl_` starts model ids.
ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
MODEL_ID_PREFIX = "mdl_"


def get_model(session: Session, *, tenant: str, model_id: str) -> Model:
    """The tenant's registered model, or NotFound (also for another tenant's)."""
    model = get_by_id(session, Model, model_id)
    if model is None or model.tenant_id != tenant:
        raise NotFound(f"model '{model_id}' does not exist", field="model")
    return model


def resolve_model_ref(session: Session, *, tenant: str, ref: str) -> Model:
    """The tenant's model named by id or by alias; NotFound for anything else."""
    if not ref.startswith(MODEL_ID_PREFIX) and ALIAS_PATTERN.fullmatch(ref):
        alias = session.get(ModelAlias, (tenant, ref))
        if alias is None:
            raise NotFound(f"model or alias '{ref}' does not exist", field="model")
        return get_model(session, tenant=tenant, model_id=alias.model_id)
    return get_model(session, tenant=tenant, model_id=ref)


def get_model_for_task(session: Session, *, tenant: str, model_id: str, task: str) -> Model:
    """The tenant's model (by id or alias), which must serve `task` (422 otherwise)."""
    model = resolve_model_ref(session, tenant=tenant, ref=model_id)
    require_task(model, ref=model_id, task=task)
    return model


def require_task(model: Model, *, ref: str, task: str) -> None:
    """422 unless `model` (named `ref`: its id or an alias) serves `task`."""
    if model.task != task:
        raise InvalidInput(
            f"model '{ref}'"
            + (f" (alias of '{model.id}')" if model.id != ref else "")
            + f" is a '{model.task}' model; it cannot serve '{task}'",
            field="model",
        )


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
