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

    return set(Base.metadata.tables)


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
            diff: list[Any] = compare_metadata(context, Base.metadata)
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
