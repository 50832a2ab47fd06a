"""Engine and session factory, built from settings by create_app() or the worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings

T = TypeVar("T")


def make_engine(settings: Settings) -> Engine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while the worker writes progress; FKs are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_by_id(session: Session, model: type[T], object_id: str) -> T | None:
    """The row with this client-given id, or None.

    Ids we make never hold a NUL character, and PostgreSQL refuses to even compare text with one
    (a 500 instead of a 404), so such an id is answered here without asking.
    """
    if "\x00" in object_id:
        return None
    return session.get(model, object_id)


def rows_changed(session: Session, stmt: Any) -> int:
    """Run a conditional UPDATE; the number of rows it changed."""
    result = cast(CursorResult[Any], session.execute(stmt))
    return int(result.rowcount)
