"""Schemathesis over the /openai/v1 routes, in-process, as three identities: coverage cases and
generated valid and invalid cases for each operation, the admin's also on a real file and job.
No 5xx, and every response as the OpenAPI document says (errors in OpenAI's shape).

SCHEMATHESIS_EXAMPLES sets the cases per operation and mode (default 10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode

from tests.conftest import RecordingQueue, auth, create_api_key
from tests.openai_api.conftest import chat_jsonl
from tests.test_schemathesis import IDENTITIES, OPENAI_PREFIX, SHORT, Tally, _cover, _explore
from tests.tinymodel import sentiment_rows
from tests.tinyserved import serving_settings

pytestmark = pytest.mark.slow  # a fuzzer: in the default suite, not in `-m fast`

TINY = "local/tiny-bert"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from app.db.migrate import upgrade
    from app.main import create_app

    conf = serving_settings(Path(tmp_path_factory.mktemp("openai-schemathesis")))
    upgrade(conf)
    application = create_app(conf, queue=RecordingQueue())
    headers = {
        "admin": auth(create_api_key(conf)),
        "predict-only": auth(create_api_key(conf, scopes=("predict",))),
        "no key": {},
    }
    with TestClient(application, headers=headers["admin"]) as c:
        content = chat_jsonl(sentiment_rows(12))
        file = c.post(
            "/openai/v1/files",
            data={"purpose": "fine-tune"},
            files={"file": ("train.jsonl", content)},
        )
        assert file.status_code == 200, file.text
        job = c.post(
            "/openai/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file.json()["id"]}
        )
        assert job.status_code == 200, job.text
    real = {"file_id": file.json()["id"], "job_id": job.json()["id"], "model_id": TINY}
    schema = schemathesis.openapi.from_asgi("/openapi.json", application)
    yield {"schema": schema, "headers": headers, "real": real}
    application.state.engine.dispose()


@pytest.mark.parametrize("identity", IDENTITIES)
def test_no_server_errors(
    api: dict[str, Any], identity: str, capsys: pytest.CaptureFixture[str]
) -> None:
    schema, headers = api["schema"], api["headers"][identity]
    tally = Tally()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(OPENAI_PREFIX):
            continue
        operations += 1
        real = {k: v for k, v in api["real"].items() if f"{{{k}}}" in operation.path}
        real = real if identity == "admin" else {}
        _cover(schema, operation, headers, tally, real, None)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _explore(operation, headers, SHORT, tally, mode=mode)
        if real:
            _explore(operation, headers, SHORT, tally, path_parameters=real)
    with capsys.disabled():
        print(
            f"\nschemathesis /openai [{identity}]: {operations} operations, {tally.cases} cases, "
            f"{len(tally.server_errors)} 5xx, {len(tally.nonconforming)} not conforming; "
            f"statuses {dict(sorted(tally.statuses.items()))}"
        )
    assert operations == 14  # files 5, fine-tuning jobs 6, models 3
    assert tally.cases >= SHORT * operations
    assert not tally.server_errors, "\n".join(tally.server_errors[:5])
    assert not tally.nonconforming, "\n\n".join(tally.nonconforming[:20])
