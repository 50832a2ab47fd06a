"""What every server-side `tuneserve` command shares: --data-dir, and a database check first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from app.core.config import Settings

DATA_DIR_ENV = "TUNESERVE_DATA_DIR"

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=DATA_DIR_ENV,
        help="Data directory: SQLite database, datasets, models, logs (default: ./tuneserve-data).",
    ),
]


def cli_settings(data_dir: Path | None) -> Settings:
    """The settings from the environment, --data-dir (if given) in place of TUNESERVE_DATA_DIR."""
    from app.core.config import Settings

    return Settings(data_dir=data_dir.resolve()) if data_dir is not None else Settings()


def export_data_dir(data_dir: Path | None) -> None:
    """Pass --data-dir on to what reads the environment itself (the API factory, Celery)."""
    if data_dir is not None:
        os.environ[DATA_DIR_ENV] = str(data_dir.resolve())


def fail(message: str) -> typer.Exit:
    """Say `message` on stderr as one line; raise the returned Exit (status 1)."""
    typer.echo(f"tuneserve: {message}", err=True)
    return typer.Exit(1)


def require_database(settings: Settings, *, server_may_be_down: bool = False) -> None:
    """Stop the command with one line on stderr unless the database exists and is migrated."""
    from app.db.preflight import DatabaseProblem
    from app.db.preflight import require_database as check

    try:
        check(settings, server_may_be_down=server_may_be_down)
    except DatabaseProblem as exc:
        raise fail(str(exc)) from None
