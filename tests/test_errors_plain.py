"""Errors a newcomer meets first, through the real app: a body that is not JSON (400 naming the
line and column), fields of the wrong type or range (422 naming the field as written and what it
expects in plain words), unknown fields (the nearest valid name), and the documentation pages
(their scripts and styles served by the app itself, so they work offline)."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from tests.ml.test_ner_api import CONLL, ner_upload

BASE = "sentence-transformers/all-MiniLM-L6-v2"
JSON = {"content-type": "application/json"}
# Pydantic's own names for types and errors, which no message may show.
INTERNAL = re.compile(
    r"constrained-|literal\[|function-|_parsing|_error|_type\b|Input should|Extra inputs|"
    r"Field required|TextPair|TokensInput|QAInput|[a-z_]\.\d"
)


def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]


def invalid(resp: Any) -> dict[str, Any]:
    """A 422 in the one error shape, every message of which is in plain words."""
    err = error(resp, 422)
    assert err["code"] == "invalid_input"
    problems = err["details"]["errors"]
    assert err["details"]["field"] == problems[0]["field"]
    for problem in problems:
        assert problem["message"] in err["message"]
        assert not INTERNAL.search(problem["message"]), problem
        assert problem["type"]  # pydantic's error type stays, machine-readable
    return err


def upload(client: TestClient) -> str:
    rows = "".join(f"good {i},pos\nbad {i},neg\n" for i in range(6))
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification"},
        files={"file": ("rows.csv", io.BytesIO(f"text,label\n{rows}".encode()), "text/csv")},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


# -- a body that is not JSON ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "line", "column", "words"),
    [
        ("/v1/jobs", b'{"task": "classification",\n "base_model": }', 2, 16, "expected a value"),
        ("/v1/jobs", b'{"task": "ner",}', 1, 16, "field name in double quotes"),
        ("/v1/keys", b"{'scopes': ['predict']}", 1, 2, "field name in double quotes"),
        ("/v1/predict/classification", b'{"model": "m"} x', 1, 16, "after the end"),
        ("/v1/predict/ner", b'{\n\n  "inputs": ["a\tb"]}', 3, 16, "control character"),
    ],
)
def test_a_body_that_is_not_json_is_400_naming_line_and_column(
    client: TestClient, path: str, body: bytes, line: int, column: int, words: str
) -> None:
    err = error(client.post(path, content=body, headers=JSON), 400)
    assert err["code"] == "invalid_json"
    assert err["details"] == {"line": line, "column": column}
    assert f"line {line}, column {column}" in err["message"] and words in err["message"]
    assert "decode" not in err["message"]


# -- fields of the wrong type or range --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field", "words"),
    [
        (
            "/v1/jobs",
            {"hyperparameters": {"learning_rate": "fast"}},
            "hyperparameters.learning_rate",
            'expected a number greater than 0 and at most 1, or auto; got "fast"',
        ),
        (
            "/v1/jobs",
            {"hyperparameters": {"learning_rate": -1}},
            "hyperparameters.learning_rate",
            "expected a number greater than 0 and at most 1, or auto; got -1",
        ),
        (
            "/v1/jobs",
            {"hyperparameters": {"checkpoint_every": "hourly"}},
            "hyperparameters.checkpoint_every",
            "expected a whole number from 1 to 10000000, or one of: epoch, no",
        ),
        (
            "/v1/jobs",
            {"hyperparameters": {"mixed_precision": "fp8"}},
            "hyperparameters.mixed_precision",
            "expected one of: no, bf16, fp16, auto",
        ),
        (
            "/v1/jobs",
            {"hyperparameters": {"early_stopping": {"patience": 0}}},
            "hyperparameters.early_stopping.patience",
            "expected a whole number from 1 to 1000",
        ),
        ("/v1/jobs", {"seed": 1.5}, "seed", "expected a whole number from 0 to 4294967295"),
        (
            "/v1/jobs",
            {"method": {"type": "lora", "r": 0}},
            "method.r",
            "expected a whole number from 1 to 512; got 0",
        ),
        (
            "/v1/jobs",
            {"method": {"type": "lorra"}},
            "method.type",
            "expected one of: full, lora, ia3, adalora, prefix_tuning, head_only, distill, "
            'quantize, export; got "lorra"; did you mean `lora`?',
        ),
        (
            "/v1/jobs",
            {"method": {"type": "lora", "merge_adapter": "maybe"}},
            "method.merge_adapter",
            "expected true or false",
        ),
        (
            "/v1/predict/classification",
            {"model": "m", "inputs": [{"text": 1}]},
            "inputs[0].text",
            "expected a non-empty string; got 1",
        ),
        (
            "/v1/predict/classification",
            {"model": "m", "inputs": ["ok", 5]},
            "inputs[1]",
            "expected a non-empty string, or an object with the fields text and text_pair; got 5",
        ),
        (
            "/v1/predict/classification",
            {"model": "m", "inputs": ["ok"], "top_k": 0},
            "top_k",
            "expected a whole number of 1 or more",
        ),
        (
            "/v1/predict/classification",
            {"model": "m", "inputs": []},
            "inputs",
            "expected a list of at least 1 item; got an empty list",
        ),
        (
            "/v1/predict/ner",
            {"model": "m", "inputs": [{"tokens": ["Ada", ""]}]},
            "inputs[0].tokens[1]",
            "expected a non-empty string",
        ),
        (
            "/v1/predict/qa",
            {"model": "m", "inputs": ["Where?"]},
            "inputs[0]",
            "expected an object with the fields question and context",
        ),
        (
            "/v1/keys",
            {"scopes": ["predictor"]},
            "scopes[0]",
            "expected one of: admin, data:write, train, jobs:read, models:read, predict, "
            'metrics:read; got "predictor"; did you mean `predict`?',
        ),
        ("/v1/keys", [{"scopes": ["predict"]}], "body", "expected a JSON object; got a list"),
        ("/v1/keys", None, "body", "the request body is missing; expected a JSON object"),
    ],
)
def test_type_errors_name_the_field_and_what_it_expects(
    client: TestClient, path: str, body: Any, field: str, words: str
) -> None:
    if path == "/v1/jobs":
        body = {"task": "classification", "base_model": BASE, "train_dataset": "ds_x", **body}
    err = invalid(client.post(path, json=body))
    assert err["details"]["field"] == field
    assert words in err["message"], err["message"]
    assert err["message"].startswith(field if field != "body" else "the request body")


def test_a_schema_the_errors_cannot_be_read_against_still_gets_a_422(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.core.validation as validation

    def unreadable(root: Any, loc: Any) -> Any:
        raise TypeError("a schema shape the walk does not know")

    monkeypatch.setattr(validation, "locate", unreadable)
    err = error(client.post("/v1/predict/classification", json={"model": "m", "inputs": 5}), 422)
    assert err["details"]["field"] == "inputs" and err["message"].startswith("inputs: ")


def test_query_parameters_read_the_same_way(client: TestClient) -> None:
    err = invalid(client.get("/v1/jobs", params={"limit": "many"}))
    assert err["message"] == 'limit: expected a whole number from 1 to 100; got "many"'
    err = invalid(client.get("/v1/jobs/job_x/events", params={"after": "-1"}))
    assert err["details"]["field"] == "after" and "whole number from 0 to" in err["message"]


def test_task_options_errors_read_the_same_way(client: TestClient) -> None:
    train = ner_upload(client, CONLL, "train.conll").json()["id"]
    spec = {"task": "ner", "base_model": BASE, "train_dataset": train, "validation_dataset": train}
    err = error(
        client.post("/v1/jobs", json={**spec, "task_options": {"label_all_tokens": 3}}), 422
    )
    assert err["details"]["field"] == "task_options.label_all_tokens"
    assert err["message"] == (
        "task_options.label_all_tokens: expected true or false; got 3 (task 'ner')"
    )
    err = error(client.post("/v1/jobs", json={**spec, "task_options": {"all_tokens": True}}), 422)
    assert err["message"].startswith(
        "unknown field `task_options.all_tokens`; did you mean `task_options.label_all_tokens`?"
    )


# -- unknown fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/jobs",
            {"hyperparams": {"epochs": 1}},
            "unknown field `hyperparams`; did you mean `hyperparameters`?",
        ),
        (
            "/v1/jobs",
            {"hyperparameters": {"learning_rat": 0.1}},
            "unknown field `hyperparameters.learning_rat`; "
            "did you mean `hyperparameters.learning_rate`?",
        ),
        (
            "/v1/jobs",
            {"hyperparameters": {"early_stopping": {"patiense": 3}}},
            "unknown field `hyperparameters.early_stopping.patiense`; "
            "did you mean `hyperparameters.early_stopping.patience`?",
        ),
        (
            "/v1/jobs",
            {"method": {"type": "lora", "lora_alph": 16}},
            "unknown field `method.lora_alph`; did you mean `method.lora_alpha`?",
        ),
        (
            "/v1/jobs",
            {"method": {"type": "adalora", "deltat": 2}},
            "unknown field `method.deltat`; did you mean `method.deltaT`?",
        ),
        (
            "/v1/predict/classification",
            {"model": "m", "inputs": [{"txt": "a film"}]},
            "unknown field `inputs[0].txt`; did you mean `inputs[0].text`?",
        ),
        (
            "/v1/predict/qa",
            {"model": "m", "inputs": [{"question": "q", "contxt": "c"}]},
            "unknown field `inputs[0].contxt`; did you mean `inputs[0].context`?",
        ),
        (
            "/v1/keys",
            {"scopes": ["predict"], "nmae": "ci"},
            "unknown field `nmae`; did you mean `name`?",
        ),
        (
            "/v1/keys",
            {"scopes": ["predict"], "expires": "never"},
            "unknown field `expires`; the fields are: tenant, scopes, name",
        ),
    ],
)
def test_unknown_fields_suggest_the_nearest_valid_one(
    client: TestClient, path: str, body: dict[str, Any], message: str
) -> None:
    if path == "/v1/jobs":
        body = {"task": "classification", "base_model": BASE, "train_dataset": "ds_x", **body}
    err = invalid(client.post(path, json=body))
    found = {p["message"]: p["type"] for p in err["details"]["errors"]}
    assert found.get(message) == "extra_forbidden", err["message"]


def test_key_creation_refuses_unknown_fields_and_creates_no_key(client: TestClient) -> None:
    before = len(client.get("/v1/keys").json()["data"])
    invalid(client.post("/v1/keys", json={"scope": ["admin"], "scopes": ["predict"]}))
    assert len(client.get("/v1/keys").json()["data"]) == before


def test_a_misspelt_upload_field_suggests_the_right_one(client: TestClient) -> None:
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification", "colum_mapping": '{"a": "text"}'},
        files={"file": ("rows.csv", io.BytesIO(b"text,label\na,b\n"), "text/csv")},
    )
    err = error(resp, 422)
    assert err["details"]["field"] == "colum_mapping"
    assert "did you mean 'column_mapping'?" in err["message"]


def test_service_level_unknown_task_options_name_the_field(client: TestClient) -> None:
    spec = {"task": "classification", "base_model": BASE, "train_dataset": upload(client)}
    err = error(client.post("/v1/jobs", json={**spec, "task_options": {"stride": 2}}), 422)
    assert err["details"]["field"] == "task_options.stride"
    assert "`task_options` takes no fields" in err["message"]


# -- the documentation pages, offline ---------------------------------------------------------


class _Assets(HTMLParser):
    """The URLs of every script and stylesheet (and icon) that a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.urls.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.urls.append(str(found["href"]))


@pytest.mark.parametrize(("page", "least"), [("/docs", 3), ("/redoc", 2)])
def test_docs_pages_load_every_asset_from_the_app_itself(
    anon_client: TestClient, page: str, least: int
) -> None:
    resp = anon_client.get(page)  # no API key, like /openapi.json
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(resp.text)
    assert len(parser.urls) >= least, parser.urls  # the script(s), stylesheet and icon
    assert "fonts.googleapis" not in resp.text and "cdn." not in resp.text
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} loads {url} from another host"
        asset = anon_client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    js = [u for u in parser.urls if u.endswith(".js")]
    assert js and all(
        anon_client.get(u).headers["content-type"].startswith("text/javascript") for u in js
    )
    # Only the files the pages load: nothing else of the package that ships them.
    assert anon_client.get("/docs/assets/core.py").status_code == 404
