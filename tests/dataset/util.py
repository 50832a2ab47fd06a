"""Helpers for the dataset tests: post an upload, list what a data dir holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fastapi.testclient import TestClient

from app.core.config import Settings


class Response(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def upload(
    client: TestClient,
    content: bytes,
    filename: str | None = "rows.csv",
    *,
    task: str | None = "classification",
    **fields: Any,
) -> Response:
    """POST /v1/datasets with `content` as the file and the other form fields given."""
    data = {k: v for k, v in fields.items() if v is not None}
    if task is not None:
        data["task"] = task
    return client.post("/v1/datasets", data=data, files={"file": (filename, content)})


def created(resp: Response) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def error(resp: Response, status: int) -> dict[str, Any]:
    """The error body of a response that must have `status`, in the one shape."""
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) <= {"code", "message", "details"}
    return body


def leftovers(settings: Settings) -> list[str]:
    """Files under the data dir other than the database: what a failed upload must not leave."""
    root = settings.data_dir
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("tuneserve.db")
    )


def dataset_dir(settings: Settings, dataset_id: str) -> Path:
    return settings.data_dir / "datasets" / dataset_id
