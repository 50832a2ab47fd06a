"""Shared fixtures: settings on a temporary data dir, a migrated SQLite database, the real app."""

from __future__ import annotations

import gc
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        self.queues: dict[str, str] = {}

    def enqueue(self, job_id: str, queue: str = "training") -> None:
        self.enqueued.append(job_id)
        self.queues[job_id] = queue

    def held_job_ids(
        self, *, delivered_within: float, queues: tuple[str, ...] = ("training",)
    ) -> set[str] | None:
        return set(self.enqueued)


@pytest.fixture(scope="session", autouse=True)
def warm_upload_parsers() -> Iterator[None]:
    """One warm pool of upload parsing processes for the whole run: apps come and go, it stays."""
    from app.dataset.isolation import held

    with held():
        yield


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    from app.core.config import Settings

    return Settings(data_dir=tmp_path / "data", redis_url=None)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database built by running the migrations, once a session; tests get copies."""
    from app.core.config import Settings
    from app.db.migrate import upgrade

    settings = Settings(data_dir=tmp_path_factory.mktemp("migrated") / "data", redis_url=None)
    upgrade(settings)
    return settings.data_dir / "tuneserve.db"


@pytest.fixture
def migrated(settings, migrated_sqlite: Path):  # type: ignore[no-untyped-def]
    from app.db.migrate import upgrade

    if settings.database_url is not None:
        upgrade(settings)
        return settings
    # A copy of the migrated database (SQLite's backup API: whole and consistent), not a run
    # of every migration for each of several hundred tests.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(migrated_sqlite)
    target = sqlite3.connect(settings.data_dir / "tuneserve.db")
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
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


# Modules that start real processes (Redis, a Celery worker, the API) for the module or the
# session. Under pytest-xdist (`--dist loadscope`) every module runs whole, in order, on one worker;
# these go first, since they are the longest.
SERVICE_DIRS = ("tests/e2e/", "tests/faults/")
# Every test without one of these marks is also marked `fast`: `pytest -m fast` while developing.
SLOW_MARKS = ("e2e", "faults", "postgres", "long", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(mark) for mark in SLOW_MARKS):
            item.add_marker(pytest.mark.fast)
    items.sort(key=lambda item: not item.nodeid.startswith(SERVICE_DIRS))


# Python's cycle collector walks every object of the generations it collects, and a test process
# that has run a few hundred tests holds millions (imported libraries, session fixtures, the apps
# and models of earlier tests): each full collection took about 2.7 s, and collections took 431 of
# the 685 CPU seconds of `-m fast` in one process. After each module its garbage is collected once
# and what survives is frozen (gc.freeze: left out of later collections, still freed when its
# last reference goes), so later collections walk only what later tests create.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield  # the test's fixtures, and the module's after its last test, are torn down
    if nextitem is None or getattr(nextitem, "module", None) is not getattr(item, "module", None):
        gc.collect()
        gc.freeze()


# The fault-injection figures (tests/faults), printed at the end of the run. Here, not in
# tests/faults/conftest.py, so that the pytest-xdist controller, which collects nothing, has the
# hooks too: each worker hands its figures over when it finishes.
def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.faults.figures import FIGURES

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_figures"] = FIGURES.as_dict()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    from tests.faults.figures import FIGURES

    figures = getattr(node, "workeroutput", {}).get("fault_figures")
    if figures:
        FIGURES.merge(figures)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults.figures import FIGURES

    if not FIGURES.submitted:
        return
    summary = FIGURES.summary()
    terminalreporter.section("fault injection")
    for key, value in summary.items():
        terminalreporter.write_line(f"{key:>22}: {value}")
    terminalreporter.write_line(json.dumps({"fault_injection": summary}))
