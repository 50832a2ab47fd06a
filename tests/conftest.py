"""Shared fixtures: settings on a temporary data dir, a migrated SQLite database, the real app."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.pgserver import postgres_server, postgres_url  # noqa: F401  (PostgreSQL fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


class RecordingQueue:
    """Stands in for Redis in API tests that are not about the queue: records enqueued ids."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []

    def enqueue(self, job_id: str) -> None:
        self.enqueued.append(job_id)

    def held_job_ids(self, *, delivered_within: float) -> set[str] | None:
        return set(self.enqueued)


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    from app.core.config import Settings

    return Settings(data_dir=tmp_path / "data", redis_url=None)


@pytest.fixture
def migrated(settings):  # type: ignore[no-untyped-def]
    from app.db.migrate import upgrade

    upgrade(settings)
    return settings


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def app(migrated, queue):  # type: ignore[no-untyped-def]
    from app.main import create_app

    application = create_app(migrated, queue=queue)
    yield application
    application.state.engine.dispose()


def create_api_key(settings, tenant: str = "default", scopes: tuple[str, ...] = ("admin",)) -> str:  # type: ignore[no-untyped-def]
    """A new API key in the migrated database of `settings`."""
    from app.auth.schemas import Scope
    from app.auth.service import create_key
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            _, key = create_key(session, tenant=tenant, scopes=[Scope(s) for s in scopes])
    finally:
        engine.dispose()
    return key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin_key(migrated) -> str:  # type: ignore[no-untyped-def]
    """An admin key of the default tenant; `client` sends it on every request."""
    return create_api_key(migrated)


@pytest.fixture
def client(app, admin_key) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, headers=auth(admin_key)) as c:
        yield c


@pytest.fixture
def anon_client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """The app without any API key."""
    with TestClient(app) as c:
        yield c


def shared_data(*parts: str) -> Path:
    """A file under the shared real-data folder, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path
