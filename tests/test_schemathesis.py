"""Schemathesis against the app's own OpenAPI document, in-process (ASGI), as three identities.

Every operation gets schemathesis' coverage cases (boundary values, each constraint broken,
unexpected methods) and generated schema-valid (positive) and schema-invalid (negative) cases;
the admin also gets cases on a real dataset, job and sweep. No response may be a 5xx, and every
response must match what the document says (status code, content type, headers, body schema).

Each /v1/predict/{task} case that has a `model` string is bound to a real registered tiny model
of that task (full, LoRA adapter, merged LoRA, int8, in turn), so that its inputs reach the
tokenizer and the model.

SCHEMATHESIS_EXAMPLES sets the cases per operation and mode (default 10, about a minute here);
`pytest -m long tests/test_schemathesis.py` runs the long variant (SCHEMATHESIS_LONG_EXAMPLES,
default 200).
"""

from __future__ import annotations

import contextlib
import itertools
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

from tests.conftest import RecordingQueue, auth, create_api_key
from tests.tinyserved import served_copy

pytestmark = pytest.mark.slow  # a fuzzer: in the default suite, not in `-m fast`

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
OPENAI_PREFIX = "/openai/"


@dataclass
class Api:
    schema: Any
    headers: dict[str, dict[str, str]]
    real_ids: dict[str, str]
    # Registered tiny models by task: what the predict operations' `model` is bound to.
    models: dict[str, list[str]]


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    # Predict cases a real model answered (200), by task.
    predicted: Counter[str] = field(default_factory=Counter)
    nonconforming: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    from app.main import create_app

    conf, served = served_copy(tmp_path_factory, "schemathesis")
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
        sweep = c.post(
            "/v1/sweeps",
            json={
                "task": "classification",
                "base_model": BASE,
                "train_dataset": ds.json()["id"],
                "hyperparameters": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
                "max_trials": 2,
                "parallel": 1,
            },
        )
        assert sweep.status_code == 201, sweep.text
        models = {task: list(kinds.values()) for task, kinds in served.items()}
    real_ids = {
        "dataset_id": ds.json()["id"],
        "job_id": job.json()["id"],
        "sweep_id": sweep.json()["id"],
    }
    schema = schemathesis.openapi.from_asgi("/openapi.json", application)
    yield Api(schema, headers, real_ids, models)
    application.state.engine.dispose()


# A predict operation's task, and the model ids its cases take in turn.
Models = tuple[str, Iterator[str]]


def _send(case: Any, headers: dict[str, str], tally: Tally, models: Models | None) -> None:
    """Send one case; tally its status, a 5xx, and any check the response fails. A case with a
    `model` string in its body gets the next of `models` there."""
    bound = models is not None and isinstance(case.body, dict)
    bound = bound and isinstance(case.body.get("model"), str)
    if models is not None and bound:
        case.body["model"] = next(models[1])
    response = case.call(headers=headers)
    tally.cases += 1
    tally.statuses[response.status_code] += 1
    if models is not None and bound and response.status_code == 200:
        tally.predicted[models[0]] += 1
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
    schema: Any,
    operation: Any,
    headers: dict[str, str],
    tally: Tally,
    real: dict[str, str],
    models: Models | None,
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
        _send(case, headers, tally, models)


def _explore(
    operation: Any,
    headers: dict[str, str],
    examples: int,
    tally: Tally,
    *,
    mode: GenerationMode = GenerationMode.POSITIVE,
    path_parameters: dict[str, str] | None = None,
    models: Models | None = None,
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
        _send(case, headers, tally, models)

    with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no parameters, no body)
        run()


def _run(api: Api, identity: str, examples: int, capsys: pytest.CaptureFixture[str]) -> None:
    headers = api.headers[identity]
    tally = Tally()
    for result in api.schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(OPENAI_PREFIX):
            continue  # tests/openai_api/test_openai_schemathesis.py, with files and jobs of its own
        # The admin also works on a real dataset and job, to get past the routes' 404s.
        real = {k: v for k, v in api.real_ids.items() if f"{{{k}}}" in operation.path}
        real = real if identity == "admin" else {}
        task = (
            operation.path.removeprefix("/v1/predict/") if "/predict/" in operation.path else None
        )
        models = (task, itertools.cycle(api.models[task])) if task else None
        _cover(api.schema, operation, headers, tally, real, models)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _explore(operation, headers, examples, tally, mode=mode, models=models)
        if real:
            _explore(operation, headers, examples, tally, path_parameters=real)
    with capsys.disabled():
        statuses = dict(sorted(tally.statuses.items()))
        print(
            f"\nschemathesis [{identity}]: {tally.cases} cases, {len(tally.server_errors)} 5xx, "
            f"{len(tally.nonconforming)} not conforming; answered by a model "
            f"{dict(sorted(tally.predicted.items()))}; statuses {statuses}"
        )
    assert tally.cases >= examples * 10
    # Every task's predict cases reached its real models (with a key that may predict).
    if identity != "no key":
        assert set(tally.predicted) == set(api.models), tally.predicted
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
