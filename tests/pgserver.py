"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir on a free loopback port.

initdb and pg_ctl refuse to run as root, so as root the server runs as the `postgres` system user
(created by Debian's postgresql package), else as `nobody`; the temp dir is handed to that user.
Fixtures: `postgres_server` (session) and `postgres_url` (a database made for the session).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BINARIES = ("initdb", "pg_ctl", "postgres")
CANDIDATE_BINDIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/bin")
SERVER_USERS = ("postgres", "nobody")


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: $PG_BINDIR, PATH, or Debian's versioned dirs."""
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for pattern in CANDIDATE_BINDIRS:
        # Newest major version first (Debian keeps one dir per version).
        candidates.extend(sorted(glob.glob(pattern), key=_version_key, reverse=True))
    for candidate in candidates:
        if all(os.access(Path(candidate) / b, os.X_OK) for b in BINARIES):
            return Path(candidate)
    return None


def _version_key(path: str) -> tuple[int, str]:
    parts = Path(path).parts
    digits = next((p for p in parts if p.isdigit()), "0")
    return int(digits), path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """None when we may run the server ourselves; as root, an unprivileged account to use."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {SERVER_USERS} exists")


class PostgresServer:
    """One PostgreSQL cluster: trust auth for the `postgres` superuser, loopback TCP only."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="tuneserve-pg-", dir=self._temp_parent()))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()

    def _temp_parent(self) -> str:
        """$TMPDIR, unless the server user could not reach into it (then /tmp)."""
        parent = Path(tempfile.gettempdir()).resolve()
        if self.user is None:
            return str(parent)
        reachable = all(p.stat().st_mode & 0o001 for p in (parent, *parent.parents))
        return str(parent) if reachable else "/tmp"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", HOME=str(self.root))
        proc = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            cwd=self.root,  # the server user must be able to enter the working directory
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}"
            )
        return proc

    def start(self) -> None:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--no-locale", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        self._launch()

    def _launch(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                # A throwaway cluster: durability buys nothing and costs seconds.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def restart(self, *, down_seconds: float, mode: str = "immediate") -> None:
        """Stop the server (`immediate`: like a crash) and start it again after a while."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        time.sleep(down_seconds)
        self._launch()

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"test_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _missing_message() -> str:
    return (
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, in "
        "/usr/lib/postgresql/*/bin or $PG_BINDIR; install Debian's `postgresql` package "
        "(.ci/run does)"
    )


def own_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server, or skip when none is installed (fail in CI), and stop it."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail(_missing_message() + "; CI must run these tests", pytrace=False)
        pytest.skip(_missing_message())
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session."""
    yield from own_server()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A database created for this session: `postgresql+psycopg://postgres@127.0.0.1:PORT/DB`."""
    return postgres_server.create_database("tuneserve_test")
