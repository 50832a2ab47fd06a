"""The `tuneserve` command: migrate, api, worker, relay, keys, and `up` (all on one machine); and
the client commands (datasets, jobs, models, predict) that talk to a running service."""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Annotated

import typer

from app.auth.cli import keys_cli
from app.cli_common import DataDirOpt, cli_settings, export_data_dir, fail, require_database
from app.client.cli import datasets_cli, jobs_cli, models_cli, predict
from app.supervisor import Supervisor, display_url

CELERY_APP = "worker.celery_app"

cli = typer.Typer(
    name="tuneserve",
    help="Fine-tune transformer models and serve them.",
    no_args_is_help=True,
    add_completion=False,
)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(datasets_cli, name="datasets")
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(models_cli, name="models")

HostOpt = Annotated[str, typer.Option(help="Interface the API binds to.")]
PortOpt = Annotated[int, typer.Option(help="Port the API listens on.")]
ConcurrencyOpt = Annotated[int, typer.Option(min=1, help="Training processes in the worker.")]
LogLevelOpt = Annotated[str, typer.Option(help="Log level.")]


@cli.command()
def migrate(data_dir: DataDirOpt = None) -> None:
    """Create the database or bring it to the latest schema (TUNESERVE_DATABASE_URL, or SQLite),
    and make the object store's bucket where TUNESERVE_STORAGE_URL names one that is missing."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from app.core.logging import configure_logging
    from app.db.migrate import upgrade
    from app.db.preflight import describe_error

    configure_logging()
    settings = cli_settings(data_dir)
    url = settings.resolved_database_url
    try:
        upgrade(settings)
    except SQLAlchemyError as exc:
        raise fail(describe_error(exc, url)) from None
    except CommandError as exc:  # e.g. a database migrated by a newer Tuneserve
        raise fail(f"cannot migrate {display_url(url)}: {exc}") from None
    typer.echo(f"database at head: {display_url(url)}")
    from app.core.store import StoreUnavailable, get_store

    try:
        typer.echo(get_store(settings).prepare())
    except StoreUnavailable as exc:
        raise fail(exc.message) from None


@cli.command()
def api(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    log_level: LogLevelOpt = "info",
    data_dir: DataDirOpt = None,
) -> None:
    """Serve the HTTP API with uvicorn (one process; run `migrate` first)."""
    import uvicorn

    from app.core.logging import configure_logging

    require_database(cli_settings(data_dir), server_may_be_down=True)
    export_data_dir(data_dir)  # create_app() reads its settings from the environment
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


def default_worker_queues() -> str:
    """The training queue, and the gpu queue on a machine with an NVIDIA GPU (found without
    touching CUDA: the worker's parent process never does)."""
    from app.core.queue import GPU_QUEUE, TRAINING_QUEUE
    from app.ml.device import nvidia_gpu_present

    return f"{TRAINING_QUEUE},{GPU_QUEUE}" if nvidia_gpu_present() else TRAINING_QUEUE


def worker_argv(concurrency: int, log_level: str = "info", queues: str | None = None) -> list[str]:
    """The Celery worker command line: prefork pool, the named queues (default: see
    default_worker_queues)."""
    return [
        sys.executable, "-m", "celery",
        "--app", CELERY_APP,
        "worker",
        "--pool", "prefork",
        "--concurrency", str(concurrency),
        "--queues", queues or default_worker_queues(),
        "--loglevel", log_level,
        # One worker per broker here; jobs are cancelled through the database, not revokes.
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


@cli.command()
def relay(log_level: LogLevelOpt = "info", data_dir: DataDirOpt = None) -> None:
    """Publish queued jobs' messages and re-queue jobs whose worker died (outbox relay, reaper)."""
    import threading

    from app.core.logging import configure_logging
    from app.core.queue import CeleryJobQueue

    settings = cli_settings(data_dir)
    require_database(settings, server_may_be_down=True)
    configure_logging(log_level)
    if not settings.redis_url:
        raise typer.BadParameter("TUNESERVE_REDIS_URL is not set (`tuneserve up` sets it for you)")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    from app.job.relay import run_relay

    run_relay(settings, CeleryJobQueue(settings.redis_url), stop)


@cli.command()
def worker(
    concurrency: ConcurrencyOpt = 1,
    log_level: LogLevelOpt = "info",
    data_dir: DataDirOpt = None,
    queues: Annotated[
        str | None,
        typer.Option(
            envvar="TUNESERVE_WORKER_QUEUES",
            help="Comma-separated queues to take jobs from (a job names one in "
            '"resources": {"queue": ...}). Default: training, plus gpu where an NVIDIA GPU is.',
        ),
    ] = None,
) -> None:
    """Run the Celery training worker (replaces this process, so signals reach Celery directly)."""
    require_database(cli_settings(data_dir), server_may_be_down=True)
    export_data_dir(data_dir)  # Celery's worker reads its settings from the environment
    from app.job.schemas import QUEUE_NAME

    if queues is not None and not all(re.fullmatch(QUEUE_NAME, q) for q in queues.split(",")):
        raise typer.BadParameter(f"--queues {queues!r}: comma-separated names like gpu,training")
    argv = worker_argv(concurrency, log_level, queues)
    os.execv(argv[0], argv)


@cli.command()
def up(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    data_dir: DataDirOpt = None,
    redis_port: Annotated[
        int, typer.Option(help="Port for the embedded Redis (0: any free port).")
    ] = 0,
    concurrency: ConcurrencyOpt = 1,
    stop_timeout: Annotated[
        float, typer.Option(help="Seconds the worker may take to finish its task on stop.")
    ] = 30.0,
) -> None:
    """Run everything on this machine: migrations, Redis, one worker and the API."""
    from app.core.logging import configure_logging

    configure_logging()
    settings = cli_settings(data_dir)
    supervisor = Supervisor(
        settings=settings,
        host=host,
        port=port,
        redis_port=redis_port or None,
        concurrency=concurrency,
        stop_timeout=stop_timeout,
    )
    raise typer.Exit(supervisor.run())


cli.command("predict")(predict)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
