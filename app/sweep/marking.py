"""Mark a sweep's best model: point the sweep's alias at it, as PUT /v1/models/{id}/aliases does."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from app.core.errors import ServiceError
from app.db.models import Sweep
from app.registry.aliases import set_alias

log = logging.getLogger("tuneserve.sweeps")


def mark_best(session: Session, *, sweep: Sweep, model_id: str) -> None:
    """Move the sweep's alias to its best model; a refusal (a model no better than the trivial
    baseline) becomes a note on the sweep instead."""
    assert sweep.alias is not None
    try:
        set_alias(session, tenant=sweep.tenant_id, model_id=model_id, name=sweep.alias)
        note = f"alias '{sweep.alias}' now points at the best model {model_id}"
    except ServiceError as exc:
        session.rollback()
        note = f"alias '{sweep.alias}' was not moved to the best model: {exc.message}"
    log.info("sweep %s: %s", sweep.id, note)
    sweep.notes = [*(sweep.notes or []), note]
    session.commit()
