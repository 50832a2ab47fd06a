"""A small HTTP client for a running Tuneserve: what the `tuneserve` client commands call.

Errors come back as ApiError with the service's own message (which names the field or row at
fault); an unreachable service is ApiError too, with a sentence that says where it looked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API = "http://127.0.0.1:8000"
# Reconnections of one event stream before `follow` gives up (each after a short wait).
STREAM_RETRIES = 30


class ApiError(Exception):
    """A request the service refused, or could not be sent."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True)
class StreamEvent:
    """One Server-Sent Event: its type (status, log, metrics, warning, end), id and JSON data."""

    type: str
    id: int | None
    data: dict[str, Any]


def _error(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
        err = body["error"]
        return ApiError(str(err["message"]), status=resp.status_code, code=err.get("code"))
    except (ValueError, KeyError, TypeError):
        return ApiError(f"HTTP {resp.status_code}: {resp.text[:300]}", status=resp.status_code)


def parse_sse(lines: Iterator[str]) -> Iterator[StreamEvent]:
    """Events from the lines of a text/event-stream body (comments and retry lines skipped)."""
    kind: str = "message"
    ident: int | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield StreamEvent(kind, ident, json.loads("\n".join(data)))
            kind, ident, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "id":
            ident = int(value) if value.isdigit() else None
        elif name == "data":
            data.append(value)


class Client:
    """Calls one service with one API key."""

    def __init__(
        self,
        api: str = DEFAULT_API,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.api = api.rstrip("/")
        self.http = httpx.Client(
            base_url=self.api, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one call; ApiError for an error answer or no answer."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach the service at {self.api}: {exc}") from None
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json() if resp.content else None

    # --- resources ---------------------------------------------------------------------------

    def upload_dataset(self, path: Path, *, task: str, **fields: str | None) -> dict[str, Any]:
        form = {"task": task} | {k: v for k, v in fields.items() if v is not None}
        with path.open("rb") as handle:
            result: dict[str, Any] = self.request(
                "POST", "/v1/datasets", data=form, files={"file": (path.name, handle)}
            )
        return result

    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/v1/jobs", json=spec)
        return result

    def page(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged list (`data` and `next_cursor`), following the cursor."""
        items: list[dict[str, Any]] = []
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            body = self.request("GET", path, params=query)
            items += body["data"]
            cursor = body.get("next_cursor")
            if not cursor:
                return items
            query["after"] = cursor

    def get(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", path)
        return result

    def resolve_model(self, ref: str) -> dict[str, Any]:
        """A model by id, or by alias name."""
        try:
            return self.get(f"/v1/models/{ref}")
        except ApiError as exc:
            if exc.status != 404:
                raise
        try:
            alias = self.get(f"/v1/aliases/{ref}")
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(f"no model or alias named '{ref}'", status=404) from None
            raise
        return self.get(f"/v1/models/{alias['model']}")

    def download(self, path: str, target: Path) -> int:
        """Stream a file answer into `target` (written beside it, then renamed); its size."""
        partial = target.with_name(f".{target.name}.part")
        try:
            with self.http.stream("GET", path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error(resp)
                with partial.open("wb") as out:
                    for chunk in resp.iter_bytes():
                        out.write(chunk)
            os.replace(partial, target)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach the service at {self.api}: {exc}") from None
        except OSError as exc:
            raise ApiError(f"cannot write {target}: {exc.strerror or exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        return target.stat().st_size

    def predict(self, task: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/predict/{task}", json=body)
        return result

    # --- following a job ---------------------------------------------------------------------

    def events(
        self,
        job_id: str,
        *,
        after: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[StreamEvent]:
        """The job's events as they happen, ending with its `end` event; reconnects (sending
        Last-Event-ID) when the connection drops."""
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with self.http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise _error(resp)
                    for event in parse_sse(resp.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.type == "end":
                            return
                failures += 1  # closed before the end (a restart, a proxy's time limit)
            except httpx.TransportError as exc:
                failures += 1
                if failures > STREAM_RETRIES:
                    raise ApiError(f"lost the event stream of {job_id}: {exc}") from None
            if failures > STREAM_RETRIES:
                raise ApiError(f"the event stream of {job_id} keeps closing before the job ends")
            # Go on after the last event seen.
            sleep(min(5.0, 0.5 * 2 ** min(failures, 4)))
