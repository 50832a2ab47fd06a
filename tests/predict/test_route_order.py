"""A predict request is matched against the predict routes before any other of the API's."""

from __future__ import annotations

from typing import Any

from starlette.routing import Match

from app.ml.tasks import REGISTRY


def routes_tried(app: Any, method: str, path: str) -> int:
    """How many of the app's top-level routes a request is matched against, its own included."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    for tried, route in enumerate(app.router.routes, start=1):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return tried
    raise AssertionError(f"no route answers {method} {path}")


def test_predict_requests_meet_their_routes_first(app: Any) -> None:
    predict = [routes_tried(app, "POST", f"/v1/predict/{task}") for task in REGISTRY]
    others = [routes_tried(app, "GET", f"/v1/{name}") for name in ("keys", "datasets", "jobs")]
    assert max(predict) < min(others), (predict, others)
