"""Run the real service for end-to-end and fault tests: a Redis server, `tuneserve worker`,
`tuneserve relay` and `tuneserve api`, each a real process that a test may kill and restart."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from app.core.embedded_redis import EmbeddedRedis

CLI = [sys.executable, "-c", "from app.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    # Whatever the process left in its group (a killed worker's pool processes).
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Service:
    client: httpx.Client
    redis_url: str
    data_dir: Path
    env: dict[str, str]
    admin_key: str
    redis: EmbeddedRedis
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)
    worker_argv: list[str] = field(default_factory=list)
    # Each process with its own data directory (sharing only the database, Redis and the store).
    separate_dirs: bool = False

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start (or restart) one named process, appending to <data_dir>/<name>.log."""
        if name not in self.logs:
            self.logs[name] = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            argv,
            env=env or self.env,
            stdout=self.logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so a test can kill a worker with its pool
        )

    def start_worker(
        self, data_dir: Path | None = None, *, extra_env: dict[str, str] | None = None
    ) -> None:
        """Start (or restart) the worker; `data_dir`: its own, as on another machine."""
        env = (
            self.env_for("worker")
            if data_dir is None
            else self.env | {"TUNESERVE_DATA_DIR": str(data_dir)}
        )
        self.start("worker", self.worker_argv, env | (extra_env or {}))

    def env_for(self, name: str) -> dict[str, str]:
        """A process's environment: with separate data directories, its own under data_dir."""
        if not self.separate_dirs:
            return self.env
        return self.env | {"TUNESERVE_DATA_DIR": str(self.data_dir / f"{name}-disk")}

    def worker_children(self) -> list[int]:
        """PIDs of the worker's pool processes."""
        parent = self.procs["worker"].pid
        out = subprocess.run(
            ["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def kill_worker(self, sig: int = signal.SIGKILL, *, wait: float = 30.0) -> None:
        """Signal the worker's whole process group (parent and pool) and wait for the parent."""
        proc = self.procs["worker"]
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(wait)

    def restart_redis(self, *, persistent: bool = True, down_seconds: float = 0.0) -> None:
        """Kill Redis (SIGKILL, no chance to flush) and start it again on the same port."""
        assert self.redis.process is not None
        self.redis.process.kill()
        self.redis.process.wait()
        time.sleep(down_seconds)
        if not persistent:  # a Redis without persistence comes back empty
            for path in self.redis.redis_dir.glob("*"):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        # The same port and directory: clients reconnect to the address they know.
        self.redis = EmbeddedRedis(self.data_dir, self.redis.port, persistent=persistent)
        self.redis.start()

    def new_client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=str(self.client.base_url), timeout=120, headers=headers)

    def tenant_client(self, name: str) -> httpx.Client:
        """A client with an admin key of a new tenant named after `name`: its listings show only
        what it made, so tests sharing one service stay independent."""
        from app.core.config import Settings
        from tests.conftest import create_api_key

        slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:40] or "tenant"
        tenant = f"{slug}-{secrets.token_hex(4)}"
        settings = Settings(
            data_dir=self.data_dir, database_url=self.env.get("TUNESERVE_DATABASE_URL")
        )
        return self.new_client(create_api_key(settings, tenant=tenant))

    def stop_all(self) -> None:
        for name in ("api", "relay", "worker"):
            if name in self.procs:
                _stop(self.procs[name])
        for f in self.logs.values():
            f.close()
        self.redis.stop()


@contextmanager
def running_service(
    data_dir: Path,
    *,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    celery_app: str = "worker.celery_app",
    persistent_redis: bool = True,
    separate_dirs: bool = False,
    worker_queues: str | None = None,
) -> Iterator[Service]:
    """Start Redis, one worker process, the relay and the API; yield a keyed HTTP client.
    `separate_dirs`: each process gets its own data directory, as on machines of their own
    (with a database server and an object store given in `database_url` and `extra_env`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(data_dir, persistent=persistent_redis)
    redis.start()
    admin_key = "tsk_" + secrets.token_urlsafe(32)
    env = dict(os.environ)
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        # Other test processes (pytest-xdist workers) share the cores: one training thread, not
        # one per core, so that torch's threads do not fight theirs (oversubscribed, all slow down).
        env["TUNESERVE_TRAINING_THREADS"] = "1"
    env |= {
        "TUNESERVE_DATA_DIR": str(data_dir),
        "TUNESERVE_REDIS_URL": redis.url,
        "TUNESERVE_BOOTSTRAP_ADMIN_KEY": admin_key,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    if database_url:
        env["TUNESERVE_DATABASE_URL"] = database_url
    subprocess.run([*CLI, "migrate"], env=env, check=True, timeout=120)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(
        base_url=base, timeout=120, headers={"Authorization": f"Bearer {admin_key}"}
    )
    from app.core.queue import TRAINING_QUEUE

    worker_argv = [
        sys.executable, "-m", "celery", "--app", celery_app, "worker", "--pool", "prefork",
        "--concurrency", "1", "--queues", worker_queues or TRAINING_QUEUE, "--loglevel", "info",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    service = Service(
        client, redis.url, data_dir, env, admin_key, redis,
        worker_argv=worker_argv, separate_dirs=separate_dirs,
    )  # fmt: skip
    try:
        api_env = service.env_for("api") | {"OMP_NUM_THREADS": "1"}
        service.start("api", [*CLI, "api", "--port", str(port)], api_env)
        service.start_worker()
        service.start("relay", [*CLI, "relay"], service.env_for("relay"))
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or any(
                p.poll() is not None for p in service.procs.values()
            ):
                raise RuntimeError("service did not start:\n" + tail_logs(data_dir))
            time.sleep(0.3)
        yield service
    finally:
        client.close()
        service.stop_all()


def tail_logs(data_dir: Path, lines: int = 40) -> str:
    out = []
    for name in ("worker", "relay", "api"):
        path = data_dir / f"{name}.log"
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name}.log\n" + "\n".join(text))
    return "\n".join(out)


def wait_for_job(
    client: httpx.Client, job_id: str, *, timeout: float, data_dir: Path
) -> dict[str, Any]:
    """Poll a job until it ends; fail with the logs if it takes longer than `timeout`."""
    return wait_for(client, job_id, ("succeeded", "failed", "cancelled"), timeout, data_dir)


def wait_for(
    client: httpx.Client,
    job_id: str,
    statuses: tuple[str, ...],
    timeout: float,
    data_dir: Path,
    *,
    min_attempt: int = 0,
    min_step: int = 0,
) -> dict[str, Any]:
    """Poll until the job is in one of `statuses` (with at least that attempt and step)."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = client.get(f"/v1/jobs/{job_id}")
        if resp.status_code == 200:
            job = resp.json()
            if (
                job["status"] in statuses
                and job["attempt"] >= min_attempt
                and job["progress"]["step"] >= min_step
            ):
                return job
        time.sleep(0.25)
    raise AssertionError(
        f"job {job_id} not {statuses} within {timeout}s (last: {job.get('status')}, attempt "
        f"{job.get('attempt')}, step {job.get('progress')})\n" + tail_logs(data_dir)
    )
