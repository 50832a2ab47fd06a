"""The `tuneserve` command: migrate, api, worker, and `up` (everything on one machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from app.auth.cli import keys_cli

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.core.embedded_redis import EmbeddedRedis

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
    typer.echo(f"database at head: {_display_url(settings.resolved_database_url)}")


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


# --- `up`: a small process supervisor --------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path


@dataclass
class Supervisor:
    """Starts Redis, the worker and the API as children, and stops them in that reverse order."""

    settings: Settings
    host: str
    port: int
    redis_port: int | None
    concurrency: int
    stop_timeout: float
    ready_timeout: float = 180.0
    children: list[Child] = field(default_factory=list)
    redis: EmbeddedRedis | None = None
    stop_signal: int | None = None
    force: bool = False

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def run(self) -> int:
        """Returns the exit code: 0 after a requested stop, 1 when something failed."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            return self._run()
        except Exception as exc:  # startup failures: report them plainly, then clean up
            _say(f"tuneserve up: {exc}", err=True)
            return 1
        finally:
            self._shutdown()

    def _run(self) -> int:
        from app.db.migrate import upgrade

        if not _can_bind(self.host, self.port):
            raise RuntimeError(f"cannot listen on {self.host}:{self.port}: the port is in use")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        db_url = self.settings.resolved_database_url
        _say(f"migrating {_display_url(db_url)}")
        upgrade(self.settings)
        self._bootstrap_key()
        redis_url = self._start_redis()
        if self.stop_signal is not None:
            return 0
        env = self._child_env(redis_url)
        # One model-executing thread for serving, so training keeps the other core (PERF_NOTES);
        # values set explicitly in the caller's environment win.
        api_env = {"OMP_NUM_THREADS": "1", "TUNESERVE_INFERENCE_THREADS": "1", **env}
        me = [sys.executable, "-m", "app.cli"]
        self._spawn("worker", [*me, "worker", "--concurrency", str(self.concurrency)], env)
        self._spawn("relay", [*me, "relay"], env)
        api_args = ["api", "--host", self.host, "--port", str(self.port)]
        self._spawn("api", [*me, *api_args], api_env)
        if not self._wait_ready():
            return 0 if self.stop_signal is not None else 1
        logs = "api,worker,relay,redis" if self.redis is not None else "api,worker,relay"
        shown_host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        _say(
            f"tuneserve is up\n"
            f"  API       http://{shown_host}:{self.port}  (docs: /docs)\n"
            f"  data      {self.data_dir}\n"
            f"  database  {_display_url(db_url)}\n"
            f"  redis     {redis_url}\n"
            f"  logs      {self.logs_dir}/{{{logs}}}.log\n"
            f"Ctrl-C stops everything."
        )
        while self.stop_signal is None:
            if self._failed():
                return 1
            time.sleep(0.2)
        return 0

    def _bootstrap_key(self) -> None:
        """Register TUNESERVE_BOOTSTRAP_ADMIN_KEY, or on a keyless server create and print one."""
        from app.auth.service import ensure_bootstrap_key, first_admin_key
        from app.db.session import make_engine, make_sessionmaker

        engine = make_engine(self.settings)
        try:
            with make_sessionmaker(engine)() as session:
                if self.settings.bootstrap_admin_key:
                    ensure_bootstrap_key(session, self.settings.bootstrap_admin_key)
                elif (key := first_admin_key(session)) is not None:
                    _say(
                        "created the first admin API key (tenant 'default'). It is shown only "
                        f"this once; store it now:\n  {key}\n"
                        "Create more with `tuneserve keys create` or POST /v1/keys."
                    )
        finally:
            engine.dispose()

    def _start_redis(self) -> str:
        from app.core.embedded_redis import EmbeddedRedis, ping

        if self.settings.redis_url:
            if not _wait(lambda: ping(self.settings.redis_url or ""), 15.0):
                raise RuntimeError(f"Redis at {self.settings.redis_url} does not answer PING")
            return self.settings.redis_url
        self.redis = EmbeddedRedis(
            self.data_dir,
            self.redis_port,
            log_file=self.logs_dir / "redis.log",
            parent_death_signal=True,
        )
        return self.redis.start()

    def _child_env(self, redis_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TUNESERVE_REDIS_URL=redis_url,
            TUNESERVE_DATA_DIR=str(self.data_dir),
            # Idle OpenMP threads sleep instead of spinning on a core the other process needs.
            OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            PYTHONUNBUFFERED="1",
        )
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        from app.core.embedded_redis import die_with_parent

        log_file = self.logs_dir / f"{name}.log"
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: Ctrl-C reaches only us, and we stop children in order.
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self.children.append(Child(name, proc, log_file))

    def _wait_ready(self) -> bool:
        url = f"http://{_client_host(self.host)}:{self.port}/healthz"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.stop_signal is not None or self._failed():
                return False
            if _http_ok(url):
                return True
            time.sleep(0.2)
        _say(f"the API did not answer {url} within {self.ready_timeout:.0f}s", err=True)
        return False

    def _failed(self) -> bool:
        """True (after saying why) when a child has exited without being asked to."""
        from app.core.embedded_redis import log_tail

        exited = [
            (c.name, c.proc.returncode, c.log_file)
            for c in self.children
            if c.proc.poll() is not None
        ]
        if self.redis is not None and self.redis.process and self.redis.process.poll() is not None:
            exited.append(("redis", self.redis.process.returncode, self.redis.log_file))
        for name, code, log_file in exited:
            _say(f"{name} exited unexpectedly with code {code}; stopping the rest.", err=True)
            _say(f"--- last lines of {log_file} ---\n{log_tail(log_file)}", err=True)
        return bool(exited)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            self.force = True
        self.stop_signal = signum

    def _shutdown(self) -> None:
        """API and worker first (SIGTERM; the worker finishes or returns its task), Redis last."""
        live = [c for c in self.children if c.proc.poll() is None]
        if live:
            grace = ""
            if any(c.name == "worker" for c in live):
                grace = (
                    f" (the worker gets {self.stop_timeout:.0f}s to finish; signal again to force)"
                )
            _say("stopping " + ", ".join(c.name for c in live) + grace)
        for child in live:
            child.proc.send_signal(signal.SIGTERM)
        for child in live:
            timeout = self.stop_timeout if child.name == "worker" else 15.0
            self._reap(child, timeout)
        if self.redis is not None:
            self.redis.stop()

    def _reap(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while child.proc.poll() is None and time.monotonic() < deadline and not self.force:
            time.sleep(0.1)
        if child.proc.poll() is None and child.name == "worker":
            # Celery's cold shutdown: terminate the pool now, then give it a moment.
            child.proc.send_signal(signal.SIGQUIT)
            _wait(lambda: child.proc.poll() is not None, 5.0)
        if child.proc.poll() is None:
            _say(f"{child.name} did not stop in time; killing it", err=True)
        # Also whatever it left in its process group (a crashed worker's pool processes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait()


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _say(message: str, *, err: bool = False) -> None:
    typer.echo(message, err=err)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
