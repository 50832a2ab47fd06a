"""An unexpected exception is answered with the usual JSON 500 and ends there: under a real
uvicorn server the client's keep-alive connection stays open for its next request, and the
traceback is logged once."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import auth


@pytest.fixture
def server(app: Any) -> Iterator[int]:
    """The app under a real uvicorn server in a thread; its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_keep_alive=30)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield int(sock.getsockname()[1])
    srv.should_exit = True
    thread.join(30)
    sock.close()


def _exchange(
    conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str], body: Any
) -> tuple[int, dict[str, Any], str | None]:
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={**headers, "Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read()), resp.getheader("connection")


def test_a_500_keeps_the_connection_open_and_logs_once(
    server: int, admin_key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from app.predict import router

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the model lookup")

    # An internal error in a real route, after auth and body validation.
    monkeypatch.setattr(router, "resolve_cached", broken)
    headers = auth(admin_key)
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    try:
        with caplog.at_level(logging.INFO):
            status, body, connection = _exchange(
                conn, "POST", "/v1/predict/classification", headers, {"model": "m", "inputs": ["a"]}
            )
            assert status == 500 and connection != "close"
            assert body == {"error": {"code": "internal_error", "message": "internal server error"}}
            # The next request, on the same connection, gets its answer.
            status, body, _ = _exchange(conn, "GET", "/v1/models", headers, None)
            assert status == 200 and body["data"] == []
            status, body, _ = _exchange(conn, "GET", "/healthz", headers, None)
            assert status == 200
            # Counted as the 500 it became, on its route.
            conn.request("GET", "/metrics", headers=headers)
            metrics = conn.getresponse().read().decode()
    finally:
        conn.close()
    counted = {
        (s.labels.get("route"), s.labels.get("status")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "tuneserve_http_requests_total"
    }
    assert counted[("/v1/predict/classification", "500")] == 1
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert "a bug in the model lookup" in str(tracebacks[0].exc_info[1])  # type: ignore[index]
    assert "POST /v1/predict/classification" in tracebacks[0].getMessage()


def test_an_error_quoting_a_lone_surrogate_is_still_sent(app: Any, admin_key: str) -> None:
    from fastapi.testclient import TestClient

    from app.core.errors import NotFound

    def lookup() -> None:
        # As a route that quotes a client's id in its 404 would.
        raise NotFound("model 'mdl_\ud800' does not exist", field="model")

    app.add_api_route("/test-only/lookup", lookup)
    with TestClient(app, headers=auth(admin_key), raise_server_exceptions=False) as client:
        resp = client.get("/test-only/lookup")
    # Written with a \u escape: UTF-8 cannot hold the surrogate itself.
    assert resp.status_code == 404 and b"mdl_\\ud800" in resp.content
    assert resp.json()["error"]["message"] == "model 'mdl_\ud800' does not exist"
