"""The Optuna side of a sweep: its study (named by the sweep id) in our own database.

Optuna's tables are made by the sweeps migration, so the storage is opened without creating
tables and without Optuna's schema check (that check reads the `alembic_version` table, which
holds our revision, not Optuna's). Imported only where a sweep is advanced or a trial reports:
Optuna is not loaded by the API's other routes.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.db.models import Sweep

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

log = logging.getLogger("tuneserve.sweeps")

# One storage (engine) per database URL and process.
_storages: dict[str, RDBStorage] = {}
_lock = threading.Lock()
# TPE samples at random for this share of max_trials first (at least 1, at most 10: Optuna's
# default of 10 would leave a 12-trial sweep two guided trials).
STARTUP_SHARE = 3


def storage(settings: Settings) -> RDBStorage:
    """Optuna's storage on the service's database (one engine per process)."""
    import optuna
    from optuna.storages import RDBStorage

    url = settings.resolved_database_url
    with _lock:
        found = _storages.get(url)
        if found is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            engine: dict[str, Any] = (
                {"connect_args": {"timeout": 30}}
                if url.startswith("sqlite")
                else {"pool_pre_ping": True}
            )
            found = RDBStorage(
                url,
                engine_kwargs=engine,
                skip_table_creation=True,
                skip_compatibility_check=True,
            )
            _storages[url] = found
        return found


def dispose_storages() -> None:
    """Close every storage's engine (tests that drop their databases)."""
    with _lock:
        for found in _storages.values():
            found.engine.dispose()
        _storages.clear()


def pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    from optuna import pruners

    config = sweep.pruning
    if not config:
        return pruners.NopPruner()
    return pruners.MedianPruner(
        n_startup_trials=int(config.get("startup_trials", 3)),
        n_warmup_steps=int(config.get("warmup_evaluations", 0)),
    )


def sampler(sweep: Sweep, *, asked: int) -> optuna.samplers.BaseSampler:
    """TPE, seeded anew for each ask: the sampler is rebuilt in whatever process advances the
    sweep, and one seeded the same way each time would draw the same random start points."""
    from optuna.samplers import TPESampler

    seed = int((sweep.spec or {}).get("seed", 42))
    return TPESampler(
        seed=(seed * 1_000_003 + asked) % 2**32,
        n_startup_trials=max(1, min(10, sweep.max_trials // STARTUP_SHARE)),
        # Trials run in parallel: a running one counts as a poor result, so that two asks in a
        # row do not sample the same region.
        constant_liar=True,
    )


def create_study(settings: Settings, sweep: Sweep) -> None:
    import optuna
    from optuna.study import StudyDirection

    direction = (
        StudyDirection.MAXIMIZE if sweep.direction == "maximize" else StudyDirection.MINIMIZE
    )
    optuna.create_study(study_name=sweep.id, storage=storage(settings), direction=direction)


def load_study(settings: Settings, sweep: Sweep, *, asked: int = 0) -> optuna.Study:
    import optuna

    return optuna.load_study(
        study_name=sweep.id,
        storage=storage(settings),
        sampler=sampler(sweep, asked=asked),
        pruner=pruner(sweep),
    )


def delete_study(settings: Settings, sweep_id: str) -> None:
    """Remove a study whose sweep was never created (best effort)."""
    import optuna

    try:
        optuna.delete_study(study_name=sweep_id, storage=storage(settings))
    except Exception:  # noqa: BLE001  (a leftover study harms nothing)
        log.warning("could not delete the study of sweep %s", sweep_id, exc_info=True)
