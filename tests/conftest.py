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


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app) as c:
        yield c


def shared_data(*parts: str) -> Path:
    """A file under the shared real-data folder, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path
