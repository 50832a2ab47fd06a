"""Schemathesis against the app's own OpenAPI document, in-process (ASGI), as three identities.

Every operation gets schemathesis' coverage cases (boundary values, each constraint broken,
unexpected methods) and generated schema-valid (positive) and schema-invalid (negative) cases;
the admin also gets cases on a real dataset and job. No response may be a 5xx, and every
response must match what the document says (status code, content type, headers, body schema).

SCHEMATHESIS_EXAMPLES sets the cases per operation and mode (default 10, about a minute here);
`pytest -m long tests/test_schemathesis.py` runs the long variant (SCHEMATHESIS_LONG_EXAMPLES,
default 200).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from tests.conftest import RecordingQueue, auth, create_api_key

SHORT = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "10"))
LONG = int(os.environ.get("SCHEMATHESIS_LONG_EXAMPLES", "200"))
BASE = "sentence-transformers/all-MiniLM-L6-v2"
CSV = b"text,label\n" + b"".join(f"good {i},pos\nbad {i},neg\n".encode() for i in range(6))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
IDENTITIES = ["admin", "predict-only", "no key"]


@dataclass
class Api:
    schema: Any
    headers: dict[str, dict[str, str]]
    real_ids: dict[str, str]


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    nonconforming: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    from app.db.migrate import upgrade
    from app.main import create_app

    conf = Settings(
        data_dir=tmp_path_factory.mktemp("schemathesis") / "data",
        redis_url=None,
        rate_limit_per_minute=0,  # thousands of requests per key
    )
    upgrade(conf)
    application = create_app(conf, queue=RecordingQueue())
    headers = {
        "admin": auth(create_api_key(conf)),
        "predict-only": auth(create_api_key(conf, scopes=("predict",))),
        "no key": {},
    }
    with TestClient(application, headers=headers["admin"]) as c:
        ds = c.post("/v1/datasets", data={"task": "classification"}, files={"file": ("a", CSV)})
        job = c.post(
            "/v1/jobs",
            json={"task": "classification", "base_model": BASE, "train_dataset": ds.json()["id"]},
        )
    real_ids = {"dataset_id": ds.json()["id"], "job_id": job.json()["id"]}
    yield Api(schemathesis.openapi.from_asgi("/openapi.json", application), headers, real_ids)
    application.state.engine.dispose()


def _send(case: Any, headers: dict[str, str], tally: Tally) -> None:
    """Send one case; tally its status, a 5xx, and any check the response fails."""
    response = case.call(headers=headers)
    tally.cases += 1
    tally.statuses[response.status_code] += 1
    curl = case.as_curl_command(headers=headers)
    if response.status_code >= 500:
        tally.server_errors.append(f"{response.status_code} {response.text[:200]}\n  {curl}")
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup)
        if not isinstance(exc, BaseExceptionGroup):
            raise
        tally.nonconforming.append(f"{str(exc).strip()[:600]}\n  {curl}")


def _cover(
    schema: Any, operation: Any, headers: dict[str, str], tally: Tally, real: dict[str, str]
) -> None:
    """Schemathesis' coverage cases: boundary values, each constraint broken, other methods."""
    cases = schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=schema.config.generation_for(operation=operation),
    )
    for case in cases:
        for name, value in real.items():
            if name in (case.path_parameters or {}):
                case.path_parameters[name] = value
        _send(case, headers, tally)


def _explore(
    operation: Any,
    headers: dict[str, str],
    examples: int,
    tally: Tally,
    *,
    mode: GenerationMode = GenerationMode.POSITIVE,
    path_parameters: dict[str, str] | None = None,
) -> None:
    """Send `examples` generated cases to one operation; tally statuses and failed checks."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: Any) -> None:
        _send(case, headers, tally)

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no parameters, no body)
        run()


def _run(api: Api, identity: str, examples: int, capsys: pytest.CaptureFixture[str]) -> None:
    headers = api.headers[identity]
    tally = Tally()
    for result in api.schema.get_all_operations():
        operation = result.ok()
        # The admin also works on a real dataset and job, to get past the routes' 404s.
        real = {k: v for k, v in api.real_ids.items() if f"{{{k}}}" in operation.path}
        real = real if identity == "admin" else {}
        _cover(api.schema, operation, headers, tally, real)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _explore(operation, headers, examples, tally, mode=mode)
        if real:
            _explore(operation, headers, examples, tally, path_parameters=real)
    with capsys.disabled():
        statuses = dict(sorted(tally.statuses.items()))
        print(
            f"\nschemathesis [{identity}]: {tally.cases} cases, {len(tally.server_errors)} 5xx, "
            f"{len(tally.nonconforming)} not conforming; statuses {statuses}"
        )
    assert tally.cases >= examples * 10
    assert not tally.server_errors, "\n".join(tally.server_errors[:5])
    assert not tally.nonconforming, "\n\n".join(tally.nonconforming[:5])


@pytest.mark.parametrize("identity", IDENTITIES)
def test_no_server_errors(api: Api, identity: str, capsys: pytest.CaptureFixture[str]) -> None:
    _run(api, identity, SHORT, capsys)


@pytest.mark.long
@pytest.mark.parametrize("identity", IDENTITIES)
def test_no_server_errors_long(
    api: Api, identity: str, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    if "long" not in str(request.config.getoption("markexpr")):
        pytest.skip("the long run: pytest -m long tests/test_schemathesis.py")
    _run(api, identity, LONG, capsys)
