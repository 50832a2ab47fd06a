"""Deleting a registered model: refused while anything holds it, then the row, then its files.

What can hold a model is a list (`HOLDERS`), each entry naming what it found and what lets the
model go; a job kind or artifact that comes to reference models adds one entry here rather than
a branch elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict
from app.core.store import get_store
from app.db.models import Job, JobStatus, Model, ModelAlias
from app.ml.lineage import MODEL_PREFIX
from app.ml.quantize import QUANTIZED_ARTIFACTS
from app.registry.service import get_model

MODEL_IN_USE = "model_in_use"
# Holders of each kind named in a refusal, at most.
SHOWN = 10
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# Artifacts whose files are not enough to load them: an adapter is applied to its parent's
# weights, an int8 model quantizes its parent's. A full or merged child loads alone.
NEEDS_PARENT = frozenset({"adapter"}) | QUANTIZED_ARTIFACTS


def _aliases(session: Session, model: Model) -> list[str]:
    stmt = (
        select(ModelAlias.name)
        .where(ModelAlias.tenant_id == model.tenant_id, ModelAlias.model_id == model.id)
        .order_by(ModelAlias.name)
        .limit(SHOWN)
    )
    return [f"alias '{name}' points at it" for name in session.scalars(stmt)]


def _active_jobs(session: Session, model: Model) -> list[str]:
    stmt = (
        select(Job.id, Job.status)
        .where(Job.base_model == f"{MODEL_PREFIX}{model.id}", Job.status.in_(ACTIVE))
        .order_by(Job.id)
        .limit(SHOWN)
    )
    return [
        f"{status} job '{job_id}' uses it as its base model"
        for job_id, status in session.execute(stmt)
    ]


def _dependent_models(session: Session, model: Model) -> list[str]:
    stmt = (
        select(Model.id, Model.artifact)
        .where(Model.parent_model_id == model.id, Model.artifact.in_(NEEDS_PARENT))
        .order_by(Model.id)
        .limit(SHOWN)
    )
    return [
        f"model '{child}' ({artifact}) needs its files to load"
        for child, artifact in session.execute(stmt)
    ]


@dataclass(frozen=True)
class Holder:
    """One kind of thing that can hold a model: how to find them, and what lets the model go."""

    find: Callable[[Session, Model], list[str]]
    remedy: str


HOLDERS = (
    Holder(_aliases, "move its aliases to another model or delete them"),
    Holder(_active_jobs, "cancel those jobs or wait for them to end"),
    Holder(_dependent_models, "delete the models that need its files first"),
)


def holders_of(session: Session, model: Model) -> tuple[list[str], list[str]]:
    """What keeps `model` from being deleted, and what would let it go, in words; both empty
    when nothing holds it."""
    found: list[str] = []
    remedies: list[str] = []
    for holder in HOLDERS:
        held = holder.find(session, model)
        if held:
            found += held
            remedies.append(holder.remedy)
    return found, remedies


def _in_use(model_id: str, found: list[str], remedies: list[str]) -> Conflict:
    if not found:  # the commit lost a race: something pointed at it meanwhile
        found, remedies = ["an alias was pointed at it meanwhile"], [HOLDERS[0].remedy]
    return Conflict(
        f"model '{model_id}' is in use and was not deleted: {'; '.join(found)}. To delete it, "
        f"{'; '.join(remedies)}.",
        code=MODEL_IN_USE,
        model=model_id,
        holders=found,
    )


def delete_model(session: Session, *, settings: Settings, tenant: str, model_id: str) -> Model:
    """Delete the tenant's model that nothing holds: the row, then its directory (Conflict
    naming the holders otherwise; NotFound for a missing or another tenant's model)."""
    model = get_model(session, tenant=tenant, model_id=model_id)
    found, remedies = holders_of(session, model)
    if found:
        raise _in_use(model.id, found, remedies)
    session.delete(model)
    try:
        session.commit()
    except IntegrityError:
        # An alias was pointed at it between the check and the commit; the foreign key said no.
        session.rollback()
        raise _in_use(model.id, *holders_of(session, model)) from None
    if model.storage_path.startswith("models/"):
        get_store(settings).delete(model.storage_path)
    return model
