"""Every route of the app, walked as another tenant and with every scope.

The routes come from `app.routes`, so a new route is either handled by the rules here or makes
these tests fail until someone says what it should answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.auth.schemas import Scope
from app.core.docs import ASSETS, ASSETS_URL
from app.db.models import EventType, Job, JobEvent, JobStatus, Model, new_id
from app.ml.tasks import REGISTRY
from tests.conftest import auth, create_api_key

BASE = "sentence-transformers/all-MiniLM-L6-v2"
CSV = b"text,label\n" + b"".join(f"good {i},pos\nbad {i},neg\n".encode() for i in range(6))
# Public on purpose: liveness and the API's own description (with its pages' assets).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    *(("GET", f"{ASSETS_URL}/{name}") for name in ASSETS),
}
# A valid input per task for its /v1/predict route; a new task must add one.
PREDICT_INPUTS: dict[str, list[Any]] = {
    "classification": ["a good film"],
    "ner": ["Ada lives in Paris"],
    "qa": [{"question": "Where does Ada live?", "context": "Ada lives in Paris."}],
}
ANY = frozenset(str(s) for s in Scope)
# Which scopes open each route (admin opens all). The policy, written down.
ROUTE_SCOPES: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v1/keys"): frozenset(),
    ("GET", "/v1/keys"): frozenset(),
    ("DELETE", "/v1/keys/{key_id}"): frozenset(),
    ("POST", "/v1/datasets"): frozenset({"data:write"}),
    ("GET", "/v1/datasets"): frozenset({"data:write", "train"}),
    ("GET", "/v1/datasets/{dataset_id}"): frozenset({"data:write", "train"}),
    ("DELETE", "/v1/datasets/{dataset_id}"): frozenset({"data:write"}),
    ("GET", "/v1/base-models"): ANY,
    ("POST", "/v1/jobs"): frozenset({"train"}),
    ("GET", "/v1/jobs"): frozenset({"train", "jobs:read"}),
    ("GET", "/v1/jobs/{job_id}"): frozenset({"train", "jobs:read"}),
    ("GET", "/v1/jobs/{job_id}/events"): frozenset({"train", "jobs:read"}),
    ("GET", "/v1/jobs/{job_id}/checkpoints"): frozenset({"train", "jobs:read"}),
    ("POST", "/v1/jobs/{job_id}/cancel"): frozenset({"train"}),
    ("DELETE", "/v1/jobs/{job_id}"): frozenset({"train"}),
    ("POST", "/v1/sweeps"): frozenset({"train"}),
    ("GET", "/v1/sweeps"): frozenset({"train", "jobs:read"}),
    ("GET", "/v1/sweeps/{sweep_id}"): frozenset({"train", "jobs:read"}),
    ("POST", "/v1/sweeps/{sweep_id}/cancel"): frozenset({"train"}),
    ("GET", "/v1/models"): frozenset({"models:read"}),
    ("GET", "/v1/models/{model_id}"): frozenset({"models:read"}),
    ("GET", "/v1/models/{model_id}/download"): frozenset({"models:read"}),
    ("DELETE", "/v1/models/{model_id}"): frozenset({"train"}),
    ("PUT", "/v1/models/{model_id}/aliases/{name}"): frozenset({"train"}),
    ("GET", "/v1/aliases"): frozenset({"models:read"}),
    ("GET", "/v1/aliases/{name}"): frozenset({"models:read"}),
    ("DELETE", "/v1/aliases/{name}"): frozenset({"train"}),
    # The OpenAI-compatible routes: files as datasets, fine-tuning jobs as jobs, models as models.
    ("POST", "/openai/v1/files"): frozenset({"data:write"}),
    ("GET", "/openai/v1/files"): frozenset({"data:write", "train"}),
    ("GET", "/openai/v1/files/{file_id}"): frozenset({"data:write", "train"}),
    ("GET", "/openai/v1/files/{file_id}/content"): frozenset({"data:write", "train"}),
    ("DELETE", "/openai/v1/files/{file_id}"): frozenset({"data:write"}),
    ("POST", "/openai/v1/fine_tuning/jobs"): frozenset({"train"}),
    ("GET", "/openai/v1/fine_tuning/jobs"): frozenset({"train", "jobs:read"}),
    ("GET", "/openai/v1/fine_tuning/jobs/{job_id}"): frozenset({"train", "jobs:read"}),
    ("GET", "/openai/v1/fine_tuning/jobs/{job_id}/events"): frozenset({"train", "jobs:read"}),
    ("GET", "/openai/v1/fine_tuning/jobs/{job_id}/checkpoints"): frozenset({"train", "jobs:read"}),
    ("POST", "/openai/v1/fine_tuning/jobs/{job_id}/cancel"): frozenset({"train"}),
    ("GET", "/openai/v1/models"): frozenset({"models:read"}),
    ("GET", "/openai/v1/models/{model_id:path}"): frozenset({"models:read"}),
    ("DELETE", "/openai/v1/models/{model_id:path}"): frozenset({"train"}),
    # Operator keys only (metrics span every tenant): tenant b is refused below.
    ("GET", "/metrics"): frozenset({"metrics:read"}),
    **{("POST", f"/v1/predict/{task}"): frozenset({"predict"}) for task in REGISTRY},
}


def all_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app answers, HEAD aside."""
    try:  # FastAPI >= 0.16x keeps included routers whole in app.routes
        from fastapi.routing import iter_route_contexts

        entries: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI copies their routes into app.routes
        entries = list(app.routes)
    found = []
    for route in entries:
        if str(route.path).startswith("/ui"):
            continue  # the dashboard takes a session, not a key: tests/ui walks its routes
        methods = getattr(route, "methods", None)
        assert route.path and methods, f"a route of a kind this test does not know: {route!r}"
        found += [(m, str(route.path)) for m in sorted(set(methods) - {"HEAD"})]
    return found


@dataclass
class Ids:
    """What a request's path and body refer to."""

    dataset_id: str
    job_id: str
    key_id: str
    models: dict[str, str] = field(default_factory=dict)
    alias: str = "no-such-alias"
    sweep_id: str = "swp_none"
    file_id: str = "file_none"
    # A job submitted through /openai/v1 (with its OpenAI terms), besides `job_id`.
    openai_job_id: str = "job_none"

    def path(self, template: str) -> str:
        model_id = next(iter(self.models.values()), "mdl_none")
        return re.sub(r"{(\w+):\w+}", r"{\1}", template).format(  # {model_id:path} too
            file_id=self.file_id,
            dataset_id=self.dataset_id,
            job_id=self.job_id,
            key_id=self.key_id,
            model_id=model_id,
            name=self.alias,
            sweep_id=self.sweep_id,
        )


def send(c: TestClient, method: str, path: str, ids: Ids, headers: dict[str, str]) -> Any:
    """One request to a route template, with a valid body where it takes one."""
    url = ids.path(path)
    if (method, path) == ("POST", "/v1/datasets"):
        files = {"file": ("rows.csv", CSV)}
        return c.post(url, data={"task": "classification"}, files=files, headers=headers)
    if (method, path) == ("POST", "/openai/v1/files"):
        files = {"file": ("rows.csv", CSV)}
        return c.post(url, data={"purpose": "fine-tune"}, files=files, headers=headers)
    body: Any = None
    if (method, path) == ("POST", "/v1/keys"):
        body = {"scopes": ["predict"]}
    elif (method, path) == ("POST", "/v1/jobs"):
        body = {"task": "classification", "base_model": BASE, "train_dataset": ids.dataset_id}
    elif (method, path) == ("POST", "/openai/v1/fine_tuning/jobs"):
        body = {"model": BASE, "training_file": ids.file_id, "metadata": {"owner": "a"}}
    elif (method, path) == ("POST", "/v1/sweeps"):
        body = {
            "task": "classification",
            "base_model": BASE,
            "train_dataset": ids.dataset_id,
            "hyperparameters": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
            "max_trials": 2,
            "parallel": 1,
        }
    elif path.startswith("/v1/predict/"):
        task = path.rsplit("/", 1)[1]
        assert task in PREDICT_INPUTS, f"add an example input for task '{task}' to this test"
        body = {"model": ids.models.get(task, "mdl_none"), "inputs": PREDICT_INPUTS[task]}
    return c.request(method, url, headers=headers, json=body)


@pytest.fixture
def tenant_a(client: TestClient, app: FastAPI, admin_key: str) -> Ids:
    """Tenant 'default' (A) owns a dataset, a queued job with events, a model per task, a key."""
    ds = client.post(
        "/v1/datasets", data={"task": "classification"}, files={"file": ("a.csv", CSV)}
    ).json()["id"]
    job = client.post(
        "/v1/jobs", json={"task": "classification", "base_model": BASE, "train_dataset": ds}
    ).json()["id"]
    key_id = client.get("/v1/keys").json()["data"][0]["id"]
    ids = Ids(dataset_id=ds, job_id=job, key_id=key_id)
    with app.state.sessionmaker() as session:
        session.add(JobEvent(job_id=job, type=EventType.LOG, message="secret log line of A"))
        for task in REGISTRY:
            done = Job(
                id=new_id("job"),
                tenant_id="default",
                task=task,
                base_model=BASE,
                train_dataset_id=ds,
                spec={},
                status=JobStatus.SUCCEEDED,
            )
            session.add(done)
            session.flush()
            model_id = new_id("mdl")
            session.add(
                Model(
                    id=model_id,
                    tenant_id="default",
                    task=task,
                    base_model=BASE,
                    method="full",
                    label_names=["neg", "pos"],
                    job_id=done.id,
                    train_dataset_id=ds,
                    storage_path=f"models/{model_id}",
                )
            )
            ids.models[task] = model_id
        session.commit()
    ids.alias = "a-production"
    resp = client.put(f"/v1/models/{ids.models['classification']}/aliases/{ids.alias}")
    assert resp.status_code == 200, resp.text
    resp = send(client, "POST", "/v1/sweeps", ids, {})
    assert resp.status_code == 201, resp.text
    ids.sweep_id = resp.json()["id"]
    resp = send(client, "POST", "/openai/v1/files", ids, {})
    assert resp.status_code == 200, resp.text
    ids.file_id = resp.json()["id"]
    resp = send(client, "POST", "/openai/v1/fine_tuning/jobs", ids, {})
    assert resp.status_code == 200, resp.text
    ids.openai_job_id = resp.json()["id"]
    return ids


def a_ids_in(text: str, ids: Ids) -> list[str]:
    every = [
        ids.dataset_id,
        ids.job_id,
        ids.key_id,
        *ids.models.values(),
        ids.alias,
        ids.sweep_id,
        ids.file_id,
        ids.openai_job_id,
        "secret log line",
    ]
    return [i for i in every if i in text]


def openai_error(resp: Any) -> dict[str, Any]:
    """The error of an /openai/v1 answer, checked to be in OpenAI's shape."""
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error", body
    error: dict[str, Any] = body["error"]
    return error


def same_refusal(resp: Any, missing: Any, theirs: str, unknown: str) -> str | None:
    """Both a 400 in OpenAI's shape with the same message (ids aside); the `param` at fault."""
    assert resp.status_code == missing.status_code == 400, (resp.text, missing.text)
    got, expected = openai_error(resp), openai_error(missing)
    assert got["message"].replace(theirs, "ID") == expected["message"].replace(unknown, "ID")
    assert (got["param"], got["code"]) == (expected["param"], expected["code"])
    param: str | None = got["param"]
    return param


def test_tenant_b_cannot_reach_tenant_a_on_any_route(  # type: ignore[no-untyped-def]
    app, client, migrated, tenant_a
) -> None:
    b = auth(create_api_key(migrated, tenant="b"))  # an admin key: admin is per tenant too
    anon = TestClient(app)
    fresh = Ids(
        dataset_id=new_id("ds"),
        job_id=new_id("job"),
        key_id=new_id("key"),
        models={t: new_id("mdl") for t in REGISTRY},
        file_id=new_id("file"),
    )
    # B has a dataset, a file and a job of its own, so its lists are not empty.
    own_ds = send(anon, "POST", "/v1/datasets", fresh, b).json()["id"]
    own_file = send(anon, "POST", "/openai/v1/files", fresh, b).json()["id"]
    own = Ids(dataset_id=own_ds, job_id="", key_id="")
    own_job = send(anon, "POST", "/v1/jobs", own, b).json()["id"]
    lists = {
        "/v1/datasets": own_ds,
        "/v1/jobs": own_job,
        "/openai/v1/files": own_file,
        "/openai/v1/fine_tuning/jobs": own_job,
    }
    seen = []
    for method, path in all_routes(app):
        seen.append((method, path))
        resp = send(anon, method, path, tenant_a, b)
        where = f"{method} {path} as tenant b: {resp.status_code} {resp.text[:300]}"
        takes_id = bool(set(re.findall(r"{(\w+)", path)))
        if (method, path) in PUBLIC:
            assert resp.status_code == 200, where
            assert a_ids_in(resp.text, tenant_a) == [], where
        elif takes_id or path.startswith("/v1/predict/"):
            # A's object answers exactly as a missing one does.
            assert resp.status_code == 404, where
            missing = send(anon, method, path, fresh, b)
            assert missing.status_code == 404
            assert resp.json()["error"]["code"] == missing.json()["error"]["code"], where
            if path.startswith("/openai/"):  # in OpenAI's error shape, as a missing one
                assert openai_error(resp)["param"] == openai_error(missing)["param"], where
        elif (method, path) == ("GET", "/metrics"):
            assert resp.status_code == 403, where  # even for b's admin key
        elif method == "GET":
            # A list: B sees its own things (its dataset, its key) and none of A's.
            assert resp.status_code == 200, where
            assert a_ids_in(resp.text, tenant_a) == [], where
            mine = lists.get(path)
            assert mine is None or mine in resp.text, where
        elif (method, path) == ("POST", "/v1/jobs"):
            # A's dataset named in a job spec is refused exactly as a missing one.
            assert resp.status_code == 422, where
            missing = send(anon, method, path, fresh, b)
            own = resp.json()["error"]["message"].replace(tenant_a.dataset_id, "ID")
            assert own == missing.json()["error"]["message"].replace(fresh.dataset_id, "ID")
            # So is A's model named as the base to continue training from.
            theirs, unknown = tenant_a.models["classification"], fresh.models["classification"]
            messages = []
            for model_id in (theirs, unknown):
                spec = {"task": "classification", "train_dataset": own_ds}
                body = {**spec, "base_model": f"model:{model_id}"}
                answer = anon.post("/v1/jobs", json=body, headers=b)
                assert answer.status_code == 422, answer.text
                messages.append(answer.json()["error"]["message"].replace(model_id, "ID"))
            assert messages[0] == messages[1], messages
        elif (method, path) == ("POST", "/v1/sweeps"):
            # A's dataset named in a sweep is refused exactly as a missing one.
            assert resp.status_code == 422, where
            missing = send(anon, method, path, fresh, b)
            own = resp.json()["error"]["message"].replace(tenant_a.dataset_id, "ID")
            assert own == missing.json()["error"]["message"].replace(fresh.dataset_id, "ID")
        elif (method, path) == ("POST", "/openai/v1/fine_tuning/jobs"):
            # A's file, dataset or model named in a job is refused exactly as a missing one.
            assert resp.status_code == 400, where
            missing = send(anon, method, path, fresh, b)
            assert same_refusal(resp, missing, tenant_a.file_id, fresh.file_id) == "training_file"
            theirs = Ids(dataset_id="", job_id="", key_id="", file_id=tenant_a.dataset_id)
            unknown = Ids(dataset_id="", job_id="", key_id="", file_id=fresh.dataset_id)
            param = same_refusal(
                send(anon, method, path, theirs, b),
                send(anon, method, path, unknown, b),
                tenant_a.dataset_id,
                fresh.dataset_id,
            )
            assert param == "training_file"
            model_id, unknown_id = tenant_a.models["classification"], fresh.models["classification"]
            for ref, unknown_ref in (
                (model_id, unknown_id),
                (f"model:{model_id}", f"model:{unknown_id}"),
                (tenant_a.alias, "b-no-such-alias"),
            ):
                answers = [
                    anon.post(path, json={"model": r, "training_file": own_file}, headers=b)
                    for r in (ref, unknown_ref)
                ]
                assert same_refusal(*answers, ref, unknown_ref) == "model", ref
        elif (method, path) in {("POST", "/v1/keys"), ("POST", "/v1/datasets")}:
            assert resp.status_code == 201, where  # B creates its own, in its own tenant
            assert a_ids_in(resp.text, tenant_a) == [], where
        elif (method, path) == ("POST", "/openai/v1/files"):
            assert resp.status_code == 200, where  # (OpenAI's status for a created file)
            assert a_ids_in(resp.text, tenant_a) == [], where
        else:
            pytest.fail(f"{method} {path} is not covered by this test: say what it must answer")
    assert set(seen) >= set(ROUTE_SCOPES) | PUBLIC

    # Nothing of A's changed.
    assert client.get(f"/v1/datasets/{tenant_a.dataset_id}").status_code == 200
    job = client.get(f"/v1/jobs/{tenant_a.job_id}").json()
    assert job["status"] == "queued"
    assert client.get(f"/v1/sweeps/{tenant_a.sweep_id}").json()["status"] == "running"
    assert client.get("/v1/keys").json()["data"][-1]["revoked_at"] is None
    assert len(client.get("/v1/models").json()["data"]) == len(REGISTRY)
    alias = client.get(f"/v1/aliases/{tenant_a.alias}").json()
    assert (alias["model"], alias["previous_model"]) == (tenant_a.models["classification"], None)
    assert client.get(f"/openai/v1/files/{tenant_a.file_id}/content").content == CSV
    job = client.get(f"/openai/v1/fine_tuning/jobs/{tenant_a.openai_job_id}").json()
    assert job["status"] == "queued"
    assert client.get(f"/openai/v1/models/{tenant_a.models['ner']}").status_code == 200
    # A's own model is found by A (its files are missing here, hence 503, not 404).
    resp = send(client, "POST", "/v1/predict/classification", tenant_a, {})
    assert resp.status_code == 503, resp.text


def test_each_route_needs_its_scope_and_a_key(app, migrated, tenant_a) -> None:  # type: ignore[no-untyped-def]
    routes = set(all_routes(app))
    unknown = routes - set(ROUTE_SCOPES) - PUBLIC
    assert not unknown, f"routes without a scope policy in this test: {sorted(unknown)}"
    assert not set(ROUTE_SCOPES) - routes, "ROUTE_SCOPES names routes the app no longer has"
    anon = TestClient(app)
    fake = Ids(dataset_id="ds_nope", job_id="job_nope", key_id="key_nope", models={"x": "mdl_nope"})
    keys = {s: auth(create_api_key(migrated, tenant="c", scopes=(s,))) for s in ANY}
    for method, path in sorted(routes):
        if (method, path) in PUBLIC:
            assert send(anon, method, path, fake, {}).status_code == 200, path
            continue
        resp = send(anon, method, path, fake, {})
        assert resp.status_code == 401, f"{method} {path} without a key: {resp.status_code}"
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        allowed = ROUTE_SCOPES[(method, path)] | {"admin"}
        if path == "/metrics":
            allowed = set()  # these keys are tenant c's; tests/predict/test_metrics.py has more
        for scope, headers in keys.items():
            resp = send(anon, method, path, fake, headers)
            where = f"{method} {path} with scope {scope}: {resp.status_code} {resp.text[:200]}"
            if scope in allowed:
                assert resp.status_code not in (401, 403), where
                assert resp.status_code < 500, where
            else:
                assert resp.status_code == 403, where
                assert resp.json()["error"]["code"] == "missing_scope", where
