"""`tuneserve up`'s process supervisor: Redis, the worker, the relay and the API as children."""

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
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.core.embedded_redis import EmbeddedRedis


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
            say(f"tuneserve up: {exc}", err=True)
            return 1
        finally:
            self._shutdown()

    def _run(self) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        from app.db.migrate import upgrade
        from app.db.preflight import describe_error

        if not _can_bind(self.host, self.port):
            raise RuntimeError(f"cannot listen on {self.host}:{self.port}: the port is in use")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        db_url = self.settings.resolved_database_url
        say(f"migrating {display_url(db_url)}")
        try:
            upgrade(self.settings)
        except SQLAlchemyError as exc:
            raise RuntimeError(describe_error(exc, db_url)) from None
        self._bootstrap_key()
        redis_url = self._start_redis()
        if self.stop_signal is not None:
            return 0
        env = self._child_env(redis_url)
        # One torch thread per model-executing thread (the API runs one such thread per core):
        # single-threaded calls degrade gently beside a training job, where a 2-thread OpenMP team
        # slows 2-40x (PERF_NOTES). Idle model threads sleep, so training has every core while
        # /predict is idle; TUNESERVE_MODEL_THREADS=1 keeps a core free of serving. Values set
        # explicitly in the caller's environment win.
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
        say(
            f"tuneserve is up\n"
            f"  API       http://{shown_host}:{self.port}  (docs: /docs)\n"
            f"  data      {self.data_dir}\n"
            f"  database  {display_url(db_url)}\n"
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
                    say(
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
        say(f"the API did not answer {url} within {self.ready_timeout:.0f}s", err=True)
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
            say(f"{name} exited unexpectedly with code {code}; stopping the rest.", err=True)
            say(f"--- last lines of {log_file} ---\n{log_tail(log_file)}", err=True)
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
            say("stopping " + ", ".join(c.name for c in live) + grace)
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
            say(f"{child.name} did not stop in time; killing it", err=True)
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


def display_url(url: str) -> str:
    from app.db import preflight

    return preflight.display_url(url)


def say(message: str, *, err: bool = False) -> None:
    typer.echo(message, err=err)
