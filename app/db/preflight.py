"""Before a command uses the database: is there one, can we reach it, is it migrated?

Answers in one plain line, and creates nothing on the way: connecting to a missing SQLite file
would create it, so its existence is checked first.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from app.core.config import Settings

POINT_ELSEWHERE = "--data-dir DIR or TUNESERVE_DATA_DIR (or TUNESERVE_DATABASE_URL)"
# A server that does not answer should not hold a command for minutes.
CONNECT_TIMEOUT_S = 10


class DatabaseProblem(Exception):
    """Why a command cannot use the database, as one line meant for a person."""


def display_url(url: str) -> str:
    """The URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<an unparseable database URL>"


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names; None for other databases, in-memory and URI-style names."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).resolve()


def describe_error(exc: BaseException, url: str) -> str:
    """A database failure in one line: where, and the driver's first line of why."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    why = reason[0].strip() if reason else type(exc).__name__
    return f"cannot reach the database at {display_url(url)} ({why}); check TUNESERVE_DATABASE_URL"


def require_database(settings: Settings, *, server_may_be_down: bool = False) -> None:
    """Raise DatabaseProblem unless `settings` name an existing, migrated database.

    `server_may_be_down`: for services that ride out database outages (api, worker, relay), a
    database server is not probed; a SQLite file still has to exist, since they would create it.
    """
    url = settings.resolved_database_url
    try:
        path = sqlite_path(url)
    except ArgumentError:
        raise DatabaseProblem(f"TUNESERVE_DATABASE_URL is not a database URL: {url!r}") from None
    if path is not None and not path.is_file():
        raise DatabaseProblem(
            f"no database at {path}; point to yours with {POINT_ELSEWHERE}, "
            "or create one with `tuneserve up` or `tuneserve migrate`"
        )
    if path is None and server_may_be_down:
        return
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    try:
        engine = create_engine(url, connect_args=connect_args)
    except (ArgumentError, ImportError) as exc:
        raise DatabaseProblem(f"cannot use the database URL {display_url(url)}: {exc}") from None
    try:
        with engine.connect() as conn:
            migrated = inspect(conn).has_table("alembic_version")
    except SQLAlchemyError as exc:
        raise DatabaseProblem(describe_error(exc, url)) from None
    finally:
        engine.dispose()
    if not migrated:
        raise DatabaseProblem(
            f"the database at {display_url(url)} has no Tuneserve tables; create them with "
            f"`tuneserve migrate` (same settings), or point elsewhere with {POINT_ELSEWHERE}"
        )
