"""Model aliases: a tenant's stable names (`production`, `staging`) for registered models."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import Conflict, InvalidInput, NotFound
from app.db.models import Model, ModelAlias, utcnow
from app.ml.quality import Quality, required
from app.ml.tasks import get_task
from app.registry.service import ALIAS_PATTERN, MODEL_ID_PREFIX, get_model

log = logging.getLogger("tuneserve.registry")


def check_alias_name(name: str) -> None:
    if not ALIAS_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"alias '{name[:80]}' is not a valid name: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter",
            field="name",
        )
    if name.startswith(MODEL_ID_PREFIX):
        raise InvalidInput(
            f"alias '{name}' starts with '{MODEL_ID_PREFIX}', which is reserved for model ids",
            field="name",
        )


def get_alias(session: Session, *, tenant: str, name: str) -> ModelAlias:
    # Only valid names can exist (also keeps NUL characters away from PostgreSQL).
    alias = session.get(ModelAlias, (tenant, name)) if ALIAS_PATTERN.fullmatch(name) else None
    if alias is None:
        raise NotFound(f"alias '{name[:80]}' does not exist", field="alias")
    return alias


def check_quality(model: Model, *, name: str) -> None:
    """Conflict for a model no better than its task's trivial baseline (see app/ml/quality.py)."""
    if model.quality != Quality.NO_BETTER:
        return
    primary = get_task(model.task).primary_metric
    value = (model.metrics or {}).get(primary)
    base = (model.baseline_metrics or {}).get(primary)
    shown = f"{value:.4f}" if isinstance(value, int | float) else "unknown"
    needs = f" (it needs {required(float(base)):.4f})" if isinstance(base, int | float) else ""
    raise Conflict(
        f"model '{model.id}' is no better than the trivial baseline: {primary} {shown} against "
        f"the baseline's {base if base is None else f'{base:.4f}'}{needs}; send "
        f"{{\"force\": true}} to point alias '{name}' at it anyway",
        code="model_below_baseline",
        model=model.id,
        metric=primary,
        value=value,
        baseline=base,
    )


def set_alias(
    session: Session, *, tenant: str, model_id: str, name: str, force: bool = False
) -> tuple[ModelAlias, str | None]:
    """Point `name` at the tenant's model (create or move); returns it and the model it left.

    A model whose quality is no_better_than_baseline is refused (Conflict) unless `force`."""
    check_alias_name(name)
    model = get_model(session, tenant=tenant, model_id=model_id)
    if not force:
        check_quality(model, name=name)
    try:
        alias, previous = _point(session, tenant, name, model.id)
    except IntegrityError:
        # Another request created the same alias first: apply this move on top of it.
        session.rollback()
        alias, previous = _point(session, tenant, name, model.id)
    log.info("alias %s/%s -> %s (was %s)", tenant, name, model.id, previous)
    return alias, previous


def _point(
    session: Session, tenant: str, name: str, model_id: str
) -> tuple[ModelAlias, str | None]:
    alias = session.get(ModelAlias, (tenant, name), with_for_update=True)
    previous = None
    if alias is None:
        alias = ModelAlias(tenant_id=tenant, name=name, model_id=model_id)
        session.add(alias)
    else:
        previous = alias.model_id
        if previous != model_id:
            alias.previous_model_id = previous
            alias.model_id = model_id
            alias.updated_at = utcnow()
    session.commit()
    return alias, previous


def delete_alias(session: Session, *, tenant: str, name: str) -> ModelAlias:
    alias = get_alias(session, tenant=tenant, name=name)
    session.delete(alias)
    session.commit()
    return alias


def list_aliases(session: Session, *, tenant: str) -> list[ModelAlias]:
    stmt = select(ModelAlias).where(ModelAlias.tenant_id == tenant).order_by(ModelAlias.name)
    return list(session.scalars(stmt))


def aliases_of(session: Session, model: Model) -> list[str]:
    stmt = (
        select(ModelAlias.name)
        .where(ModelAlias.tenant_id == model.tenant_id, ModelAlias.model_id == model.id)
        .order_by(ModelAlias.name)
    )
    return list(session.scalars(stmt))
