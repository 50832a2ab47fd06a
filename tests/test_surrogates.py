"""A lone UTF-16 surrogate anywhere in a JSON body is a 422 naming the field, on every route.

JSON can carry one (`"\\ud800"`, or its three raw bytes); no database driver, hash or UTF-8
response can take it. These routes had plain `str` fields that let it through to a 500.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.surrogates import find_lone_surrogate

SURROGATE = "\ud800"


def post(client: TestClient, path: str, body: Any) -> Any:
    # json.dumps writes a lone surrogate as its escape, as a client's JSON encoder would.
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/jobs",
            {"task": "classification", "train_dataset": f"ds_{SURROGATE}"},
            "train_dataset",
        ),
        (
            "/v1/jobs",
            {
                "task": "classification",
                "train_dataset": "ds_x",
                "method": {"target_modules": [SURROGATE]},
            },
            "method.target_modules[0]",
        ),
        ("/v1/aliases", {"name": f"prod{SURROGATE}", "model": "mdl_x"}, "name"),
        ("/v1/keys", {"scopes": ["predict"], "name": f"k{SURROGATE}"}, "name"),
        ("/v1/keys", {"scopes": ["predict"], f"n{SURROGATE}": "x"}, "body"),
    ],
)
def test_a_surrogate_in_any_field_is_422_naming_it(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    resp = post(client, path, body)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["details"]["field"] == field
    assert error["message"].startswith(f"{field}: "), error["message"]
    assert "lone UTF-16 surrogate (\\ud800)" in error["message"]


def test_a_surrogate_as_raw_bytes_is_refused_too(client: TestClient) -> None:
    raw = b'{"scopes": ["predict"], "name": "k\xed\xa0\x80"}'
    resp = client.post("/v1/keys", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["details"]["field"] == "name"


def test_pairs_and_escaped_backslashes_are_text() -> None:
    assert find_lone_surrogate(json.dumps({"t": "\U0001f600"}).encode()) is None  # \ud83d\ude00
    assert find_lone_surrogate(b'{"t": "C:\\\\ud800"}') is None  # a backslash, then "ud800"
    assert find_lone_surrogate(b'{"t": ["a", "\\udfff"]}') == (
        "t[1]",
        find_lone_surrogate(b'"\\udfff"')[1],
    )  # type: ignore[index]
    assert find_lone_surrogate(b'{"t": "\\ud800') is None  # not JSON: the route answers 400
