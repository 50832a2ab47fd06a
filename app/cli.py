"""The `tuneserve` command: migrate, api, worker, and `up` (everything on one machine)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.auth.cli import keys_cli
from app.supervisor import Supervisor, display_url

CELERY_APP = "worker.celery_app"

cli = typer.Typer(
    name="tuneserve",
    help="Fine-tune transformer models and serve them.",
    no_args_is_help=True,
    add_completion=False,
)
cli.add_typer(keys_cli, name="keys")

HostOpt = Annotated[str, typer.Option(help="Interface the API binds to.")]
PortOpt = Annotated[int, typer.Option(help="Port the API listens on.")]
ConcurrencyOpt = Annotated[int, typer.Option(min=1, help="Training processes in the worker.")]
LogLevelOpt = Annotated[str, typer.Option(help="Log level.")]


@cli.command()
def migrate() -> None:
    """Bring the database to the latest schema (TUNESERVE_DATABASE_URL, else SQLite)."""
    from app.core.config import get_settings
    from app.core.logging import configure_logging
    from app.db.migrate import upgrade

    configure_logging()
    settings = get_settings()
    upgrade(settings)
    typer.echo(f"database at head: {display_url(settings.resolved_database_url)}")


@cli.command()
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8000, log_level: LogLevelOpt = "info") -> None:
    """Serve the HTTP API with uvicorn (one process; run `migrate` first)."""
    import uvicorn

    from app.core.logging import configure_logging

    configure_logging(log_level)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=1,
        log_level=log_level,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


def worker_argv(concurrency: int, log_level: str = "info") -> list[str]:
    """The Celery worker command line: prefork pool, the training queue only."""
    from app.core.queue import TRAINING_QUEUE

    return [
        sys.executable, "-m", "celery",
        "--app", CELERY_APP,
        "worker",
        "--pool", "prefork",
        "--concurrency", str(concurrency),
        "--queues", TRAINING_QUEUE,
        "--loglevel", log_level,
        # One worker per broker here; jobs are cancelled through the database, not revokes.
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


@cli.command()
def relay(log_level: LogLevelOpt = "info") -> None:
    """Publish queued jobs' messages and re-queue jobs whose worker died (outbox relay, reaper)."""
    import threading

    from app.core.config import get_settings
    from app.core.logging import configure_logging
    from app.core.queue import CeleryJobQueue

    configure_logging(log_level)
    settings = get_settings()
    if not settings.redis_url:
        raise typer.BadParameter("TUNESERVE_REDIS_URL is not set (`tuneserve up` sets it for you)")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    from app.job.relay import run_relay

    run_relay(settings, CeleryJobQueue(settings.redis_url), stop)


@cli.command()
def worker(concurrency: ConcurrencyOpt = 1, log_level: LogLevelOpt = "info") -> None:
    """Run the Celery training worker (replaces this process, so signals reach Celery directly)."""
    argv = worker_argv(concurrency, log_level)
    os.execv(argv[0], argv)


@cli.command()
def up(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (default: TUNESERVE_DATA_DIR).")
    ] = None,
    redis_port: Annotated[
        int, typer.Option(help="Port for the embedded Redis (0: any free port).")
    ] = 0,
    concurrency: ConcurrencyOpt = 1,
    stop_timeout: Annotated[
        float, typer.Option(help="Seconds the worker may take to finish its task on stop.")
    ] = 30.0,
) -> None:
    """Run everything on this machine: migrations, Redis, one worker and the API."""
    from app.core.config import Settings
    from app.core.logging import configure_logging

    configure_logging()
    settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
    supervisor = Supervisor(
        settings=settings,
        host=host,
        port=port,
        redis_port=redis_port or None,
        concurrency=concurrency,
        stop_timeout=stop_timeout,
    )
    raise typer.Exit(supervisor.run())


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
