"""Run the real service for end-to-end tests: Redis server, `tuneserve worker`, `tuneserve api`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.core.embedded_redis import EmbeddedRedis


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


@dataclass
class Service:
    client: httpx.Client
    redis_url: str
    data_dir: Path


@contextmanager
def running_service(data_dir: Path, *, database_url: str | None = None) -> Iterator[Service]:
    """Start Redis, one worker process and the API; yield an HTTP client on the API."""
    data_dir.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(data_dir / "redis")
    redis.start()
    env = dict(os.environ)
    env |= {
        "TUNESERVE_DATA_DIR": str(data_dir),
        "TUNESERVE_REDIS_URL": redis.url,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if database_url:
        env["TUNESERVE_DATABASE_URL"] = database_url
    cli = [sys.executable, "-c", "from app.cli import main; main()"]
    subprocess.run([*cli, "migrate"], env=env, check=True, timeout=120)
    port = free_port()
    logs = {name: open(data_dir / f"{name}.log", "wb") for name in ("worker", "api")}  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [*cli, "worker"], env=env, stdout=logs["worker"], stderr=subprocess.STDOUT
            )
        )
        procs.append(
            subprocess.Popen(
                [*cli, "api", "--port", str(port)],
                env=env | {"OMP_NUM_THREADS": "1"},
                stdout=logs["api"],
                stderr=subprocess.STDOUT,
            )
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("service did not start:\n" + tail_logs(data_dir))
            time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=120) as client:
            yield Service(client, redis.url, data_dir)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for f in logs.values():
            f.close()
        redis.stop()


def tail_logs(data_dir: Path, lines: int = 40) -> str:
    out = []
    for name in ("worker", "api"):
        path = data_dir / f"{name}.log"
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name}.log\n" + "\n".join(text))
    return "\n".join(out)


def wait_for_job(
    client: httpx.Client, job_id: str, *, timeout: float, data_dir: Path
) -> dict[str, Any]:
    """Poll a job until it ends; fail with the logs if it takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s\n" + tail_logs(data_dir))
