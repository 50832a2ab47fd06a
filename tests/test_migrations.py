"""The migrations run both ways on SQLite and PostgreSQL, and they agree with the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect

from app.core.config import Settings
from app.db.migrate import downgrade, upgrade

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on an empty database of each backend (a fresh PostgreSQL database per test)."""
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path / "data", redis_url=None)
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.create_database()
        yield Settings(data_dir=tmp_path / "data", database_url=url, redis_url=None)


def _tables(settings: Settings) -> set[str]:
    engine = create_engine(settings.resolved_database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _model_tables() -> set[str]:
    from app.db import models  # noqa: F401  (registers the tables)
    from app.db.base import Base

    return set(Base.metadata.tables) | set(_optuna_metadata().tables)


def _optuna_metadata() -> Any:
    """Optuna's storage tables, which the sweeps revision creates in our database."""
    from optuna.storages._rdb import models

    return models.BaseModel.metadata


def test_upgrade_downgrade_upgrade(db_settings: Settings) -> None:
    expected = _model_tables()

    upgrade(db_settings)
    assert _tables(db_settings) - {"alembic_version"} == expected

    downgrade(db_settings, "base")
    assert _tables(db_settings) - {"alembic_version"} == set()

    upgrade(db_settings)
    assert _tables(db_settings) - {"alembic_version"} == expected


def test_models_and_migrations_agree(db_settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db import models  # noqa: F401  (registers the tables)
    from app.db.base import Base

    upgrade(db_settings)
    engine = create_engine(db_settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diff: list[Any] = compare_metadata(context, [Base.metadata, _optuna_metadata()])
    finally:
        engine.dispose()
    assert diff == [], "models differ from the migrations; write a revision:\n" + "\n".join(
        map(repr, diff)
    )


def test_single_head() -> None:
    """Two heads mean two unmerged branches of revisions: `upgrade head` would refuse."""
    from alembic.script import ScriptDirectory

    from app.db.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config(Settings(redis_url=None)))
    assert len(script.get_heads()) == 1


PREVIOUS = "5e3a7c1b9d24"  # the revision before models.job_id stopped being a foreign key


def test_models_keep_their_rows_when_job_id_stops_being_a_foreign_key(
    db_settings: Settings,
) -> None:
    """Rows made before the revision survive it both ways; after it a job can be deleted while
    its model stays, and the downgrade refuses, naming it, while such a model is left."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from app.db.session import make_engine

    upgrade(db_settings, PREVIOUS)
    engine = make_engine(db_settings)  # foreign keys enforced on SQLite too
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO datasets (id, tenant_id, name, task, format, status, num_rows, "
                    "columns, stats, sha256, size_bytes, storage_path, created_at) VALUES "
                    "('ds_1', 'default', 'd', 'classification', 'csv', 'ready', 1, '[]', '{}', "
                    "'0', 1, 'datasets/ds_1', CURRENT_TIMESTAMP)"
                )
            )
            for job in ("job_1", "job_2"):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, tenant_id, task, base_model, train_dataset_id, "
                        "spec, status, attempt, cancel_requested, progress_step, progress_total, "
                        "epoch, created_at) VALUES (:id, 'default', 'classification', 'b', "
                        "'ds_1', '{}', 'succeeded', 1, false, 0, 0, 0, CURRENT_TIMESTAMP)"
                    ),
                    {"id": job},
                )
                conn.execute(
                    text(
                        "INSERT INTO models (id, tenant_id, task, base_model, method, "
                        "label_names, metrics, job_id, train_dataset_id, hyperparameters, "
                        "storage_path, size_bytes, created_at) VALUES (:id, 'default', "
                        "'classification', 'b', 'full', '[]', '{}', :job, 'ds_1', '{}', "
                        "'models/x', 1, CURRENT_TIMESTAMP)"
                    ),
                    {"id": job.replace("job", "mdl"), "job": job},
                )
            conn.execute(
                text(
                    "INSERT INTO model_aliases (tenant_id, name, model_id, created_at, "
                    "updated_at) VALUES ('default', 'production', 'mdl_1', CURRENT_TIMESTAMP, "
                    "CURRENT_TIMESTAMP)"
                )
            )
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = 'job_1'"))
        engine.dispose()

        upgrade(db_settings)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = 'job_1'"))
            models = conn.execute(text("SELECT id, job_id FROM models ORDER BY id")).all()
            assert [tuple(m) for m in models] == [("mdl_1", "job_1"), ("mdl_2", "job_2")]
            # The aliases' key to models came through the rebuilt table.
            with pytest.raises(IntegrityError), conn.begin_nested():
                conn.execute(text("DELETE FROM models WHERE id = 'mdl_1'"))
        engine.dispose()

        with pytest.raises(RuntimeError, match="deleted.*mdl_1"):
            downgrade(db_settings, PREVIOUS)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM model_aliases"))
            conn.execute(text("DELETE FROM models WHERE id = 'mdl_1'"))
        engine.dispose()
        downgrade(db_settings, PREVIOUS)
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = 'job_2'"))
    finally:
        engine.dispose()


BEFORE_BASELINES = "b7e2d94c1a53"  # the revision before trivial baselines and quality verdicts


def test_parent_comparison_moves_to_parent_metrics_and_back(db_settings: Settings) -> None:
    """A quantized model's parent comparison, stored as models.baseline_metrics before the
    revision, is models.parent_metrics after it (the new baseline_metrics empty), and goes back
    on the downgrade."""
    import json

    from sqlalchemy import text

    from app.db.session import make_engine

    upgrade(db_settings, BEFORE_BASELINES)
    engine = make_engine(db_settings)
    comparison = {"accuracy": 0.9, "eval_loss": 0.3}
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO models (id, tenant_id, task, base_model, method, label_names, "
                    "metrics, baseline_metrics, job_id, train_dataset_id, hyperparameters, "
                    "storage_path, size_bytes, created_at) VALUES ('mdl_q', 'default', "
                    "'classification', 'model:mdl_p', 'quantize', '[]', '{}', :cmp, 'job_q', "
                    "'ds_1', '{}', 'models/q', 1, CURRENT_TIMESTAMP)"
                ),
                {"cmp": json.dumps(comparison)},
            )
        engine.dispose()

        upgrade(db_settings)
        with engine.begin() as conn:
            row = conn.execute(
                text("SELECT parent_metrics, baseline_metrics, quality FROM models")
            ).one()
            job_columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
        assert (json.loads(row[0]) if isinstance(row[0], str) else row[0]) == comparison
        assert (row[1], row[2]) == (None, None)
        assert {"baseline_metrics", "quality", "training_warnings"} <= job_columns
        engine.dispose()

        downgrade(db_settings, BEFORE_BASELINES)
        with engine.begin() as conn:
            value = conn.execute(text("SELECT baseline_metrics FROM models")).scalar_one()
            columns = {c["name"] for c in inspect(conn).get_columns("models")}
        assert (json.loads(value) if isinstance(value, str) else value) == comparison
        assert "parent_metrics" not in columns and "quality" not in columns
    finally:
        engine.dispose()
