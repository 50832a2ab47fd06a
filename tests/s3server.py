"""A real S3-compatible server for tests: moto's server mode (`moto_server`), as its own process.

It keeps its objects in memory: stopping it is an outage, and a server started again comes back
empty unless the test keeps the same process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.service import free_port

MOTO = [sys.executable, "-c", "from moto.server import main; main()"]


@dataclass
class S3Server:
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    bucket: str = field(default_factory=lambda: f"tuneserve-{uuid.uuid4().hex[:12]}")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a process needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def url(self, prefix: str = "tuneserve") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*MOTO, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "moto_server did not start:\n" + self.log.read_text()
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def create_bucket(self) -> None:
        self.client().create_bucket(Bucket=self.bucket)


@contextmanager
def s3_server(tmp: Path) -> Iterator[S3Server]:
    """A running moto server with one empty bucket; AWS_* set in this process for its length."""
    tmp.mkdir(parents=True, exist_ok=True)
    server = S3Server(free_port(), tmp / "moto.log")
    server.start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        server.create_bucket()
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
