"""Load the models named in PRELOAD_MODELS when the API starts, in the background."""

from __future__ import annotations

import logging
import threading
from typing import Any

from app.core.config import Settings
from app.db.models import Model

log = logging.getLogger("tuneserve.predict")


def preload(settings: Settings, sessionmaker: Any, cache: Any, shared: Any) -> threading.Thread:
    """Start a thread that loads each named model into the predictor cache; returns it."""

    def run() -> None:
        from app.predict.predictor import load_predictor

        for model_id in settings.preload_models:
            try:
                with sessionmaker() as session:
                    row = session.get(Model, model_id)
                    if row is not None:
                        session.expunge(row)
                if row is None:
                    log.warning("preload: no model '%s'", model_id)
                    continue
                cache.get_or_load(row.id, lambda r=row: load_predictor(settings, r, shared=shared))
                log.info("preload: model %s loaded", model_id)
            except Exception:  # one bad model must not keep the others from loading
                log.exception("preload: model %s could not be loaded", model_id)

    thread = threading.Thread(target=run, name="preload", daemon=True)
    thread.start()
    return thread
