"""API keys: authentication, scopes, key management, bootstrap, limits, logging and the CLI."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.auth.keys import hash_key
from app.core.config import Settings, get_settings
from app.core.errors import InvalidInput
from tests.conftest import RecordingQueue, auth, create_api_key

BASE = "sentence-transformers/all-MiniLM-L6-v2"
CSV = b"text,label\n" + b"".join(f"good {i},pos\nbad {i},neg\n".encode() for i in range(6))


def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()["error"]
    return body


@pytest.fixture
def build_app(migrated: Settings) -> Iterator[Any]:
    """create_app on the migrated database with some settings changed; engines disposed after."""
    from app.main import create_app

    made: list[Any] = []

    def build(**changes: Any) -> Any:
        application = create_app(migrated.model_copy(update=changes), queue=RecordingQueue())
        made.append(application)
        return application

    yield build
    for application in made:
        application.state.engine.dispose()


# --- authentication ---------------------------------------------------------------------------


def test_missing_key_is_401_with_a_bearer_challenge(anon_client: TestClient) -> None:
    err = error(anon_client.get("/v1/datasets"), 401)
    assert err["code"] == "missing_api_key"
    resp = anon_client.get("/v1/jobs")
    assert resp.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",  # no key
        "Basic dXNlcjpwdw==",  # another scheme
        "tsk_not_even_a_scheme",
    ],
)
def test_malformed_authorization_is_401(anon_client: TestClient, header: str) -> None:
    resp = anon_client.get("/v1/datasets", headers={"Authorization": header})
    assert error(resp, 401)["code"] == "missing_api_key"
    assert resp.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["tsk_" + "A" * 43, "x", "tsk_ with spaces", "é" * 10])
def test_unknown_key_is_401(anon_client: TestClient, key: str) -> None:
    # Sent as raw bytes: a key that is not even ASCII is just an unknown key.
    resp = anon_client.get("/v1/datasets", headers={"Authorization": f"Bearer {key}".encode()})
    err = error(resp, 401)
    assert err["code"] == "invalid_api_key"
    assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_key_is_401(client: TestClient, anon_client: TestClient) -> None:
    made = client.post("/v1/keys", json={"scopes": ["predict"]}).json()
    assert anon_client.get("/v1/base-models", headers=auth(made["key"])).status_code == 200
    assert client.delete(f"/v1/keys/{made['id']}").status_code == 200
    resp = anon_client.get("/v1/base-models", headers=auth(made["key"]))
    assert error(resp, 401)["code"] == "revoked_api_key"
    assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_missing_scope_is_403_naming_it(migrated: Settings, anon_client: TestClient) -> None:
    predict_only = auth(create_api_key(migrated, scopes=("predict",)))
    err = error(anon_client.get("/v1/jobs", headers=predict_only), 403)
    assert err["code"] == "missing_scope"
    assert "'train' or 'jobs:read'" in err["message"]
    assert err["details"]["required"] == ["train", "jobs:read"]
    err = error(
        anon_client.post(
            "/v1/predict/classification",
            headers=auth(create_api_key(migrated, scopes=("train",))),
            json={"model": "mdl_x", "inputs": ["hi"]},
        ),
        403,
    )
    assert "'predict'" in err["message"]


# --- key management ---------------------------------------------------------------------------


def test_admin_creates_lists_and_revokes_keys(client: TestClient, anon_client: TestClient) -> None:
    resp = client.post("/v1/keys", json={"scopes": ["train", "jobs:read"], "name": "ci"})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    key = made["key"]
    assert key.startswith("tsk_") and made["prefix"] == key[:12]
    assert made["tenant"] == "default" and made["scopes"] == ["jobs:read", "train"]
    assert made["revoked_at"] is None
    assert anon_client.get("/v1/jobs", headers=auth(key)).status_code == 200

    listing = client.get("/v1/keys")
    assert listing.status_code == 200
    rows = listing.json()["data"]
    assert made["id"] in [r["id"] for r in rows]
    # The key is shown once: the list never carries it, nor its hash.
    assert all("key" not in r and "key_hash" not in r for r in rows)
    assert key not in listing.text and hash_key(key) not in listing.text

    revoked = client.delete(f"/v1/keys/{made['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert "key" not in revoked.json()
    assert client.delete(f"/v1/keys/{made['id']}").status_code == 200  # harmless twice
    assert error(client.delete("/v1/keys/key_missing"), 404)["code"] == "not_found"
    assert anon_client.get("/v1/jobs", headers=auth(key)).status_code == 401


def test_key_create_validates_its_body(client: TestClient) -> None:
    assert error(client.post("/v1/keys", json={"scopes": []}), 422)["code"] == "invalid_input"
    err = error(client.post("/v1/keys", json={"scopes": ["root"]}), 422)
    assert "scopes" in err["message"]
    assert error(client.post("/v1/keys", json={"scopes": ["admin"], "tenant": "Bad!"}), 422)


def test_admin_keys_manage_their_own_tenant_only(
    client: TestClient, migrated: Settings, anon_client: TestClient
) -> None:
    other = auth(create_api_key(migrated, tenant="other"))
    mine = client.post("/v1/keys", json={"scopes": ["predict"]}).json()
    # Another tenant's admin cannot mint keys for this tenant, see its keys or revoke them.
    err = error(
        anon_client.post(
            "/v1/keys", headers=other, json={"tenant": "default", "scopes": ["admin"]}
        ),
        403,
    )
    assert err["code"] == "other_tenant" and "tuneserve keys create" in err["message"]
    listed = anon_client.get("/v1/keys", headers=other).json()["data"]
    assert {r["tenant"] for r in listed} == {"other"}
    assert error(anon_client.delete(f"/v1/keys/{mine['id']}", headers=other), 404)
    assert client.get("/v1/keys").json()["data"][0]["revoked_at"] is None
    made = anon_client.post("/v1/keys", headers=other, json={"scopes": ["predict"]}).json()
    assert made["tenant"] == "other"
    assert error(anon_client.get("/v1/keys?tenant=default", headers=other), 403)


def test_operator_admin_manages_every_tenants_keys(
    client: TestClient, anon_client: TestClient
) -> None:
    """The default tenant's admin keys (the bootstrap key's) onboard tenants over HTTP."""
    made = client.post("/v1/keys", json={"tenant": "acme", "scopes": ["admin"], "name": "acme"})
    assert made.status_code == 201, made.text
    acme = made.json()
    assert acme["tenant"] == "acme"
    # The new tenant's admin works at once, in its own tenant only.
    listed = anon_client.get("/v1/keys", headers=auth(acme["key"])).json()["data"]
    assert [r["id"] for r in listed] == [acme["id"]]
    everyone = {r["tenant"] for r in client.get("/v1/keys").json()["data"]}
    assert everyone == {"default", "acme"}
    only = client.get("/v1/keys", params={"tenant": "acme"}).json()["data"]
    assert [r["id"] for r in only] == [acme["id"]]
    assert client.delete(f"/v1/keys/{acme['id']}").json()["revoked_at"] is not None
    assert anon_client.get("/v1/keys", headers=auth(acme["key"])).status_code == 401
    # ...but the operator's admin still sees only its own tenant's data.
    assert client.get("/v1/datasets").json()["data"] == []


def test_non_admin_keys_cannot_manage_keys(migrated: Settings, anon_client: TestClient) -> None:
    everything_but_admin = ("data:write", "train", "jobs:read", "models:read", "predict")
    headers = auth(create_api_key(migrated, scopes=everything_but_admin))
    for method, path, body in [
        ("POST", "/v1/keys", {"scopes": ["admin"]}),
        ("GET", "/v1/keys", None),
        ("DELETE", "/v1/keys/key_x", None),
    ]:
        resp = anon_client.request(method, path, headers=headers, json=body)
        err = error(resp, 403)
        assert err["code"] == "missing_scope" and "'admin'" in err["message"]


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_key_from_settings_works(build_app: Any) -> None:
    key = "boot-" + "k" * 40
    application = build_app(bootstrap_admin_key=key)
    build_app(bootstrap_admin_key=key)  # a restart registers nothing new
    with TestClient(application, headers=auth(key)) as c:
        rows = c.get("/v1/keys").json()["data"]
        assert [r["name"] for r in rows] == ["bootstrap admin"]
        assert rows[0]["scopes"] == ["admin"] and rows[0]["tenant"] == "default"
        # Revoked, it stays revoked even though the environment still names it.
        c.delete(f"/v1/keys/{rows[0]['id']}")
    with TestClient(build_app(bootstrap_admin_key=key), headers=auth(key)) as c:
        assert error(c.get("/v1/keys"), 401)["code"] == "revoked_api_key"


def test_too_short_bootstrap_key_is_refused(build_app: Any) -> None:
    with pytest.raises(InvalidInput, match="at least 24 characters"):
        build_app(bootstrap_admin_key="short-key")


# --- limits -----------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(build_app: Any, migrated: Settings) -> None:
    application = build_app(rate_limit_per_minute=6, rate_limit_burst=2)
    key, other = create_api_key(migrated), create_api_key(migrated)
    with TestClient(application) as c:
        assert [c.get("/v1/keys", headers=auth(key)).status_code for _ in range(2)] == [200, 200]
        resp = c.get("/v1/keys", headers=auth(key))
        err = error(resp, 429)
        assert err["code"] == "rate_limited"
        # One token every 10 s: the wait is announced in whole seconds.
        assert 1 <= int(resp.headers["Retry-After"]) <= 10
        assert err["details"]["retry_after_seconds"] == int(resp.headers["Retry-After"])
        # The limit is per key.
        assert c.get("/v1/keys", headers=auth(other)).status_code == 200


def test_active_job_cap_is_429_with_retry_after(build_app: Any, admin_key: str) -> None:
    application = build_app(max_active_jobs_per_tenant=1)
    with TestClient(application, headers=auth(admin_key)) as c:
        ds = c.post(
            "/v1/datasets", data={"task": "classification"}, files={"file": ("a.csv", CSV)}
        ).json()["id"]
        spec = {"task": "classification", "base_model": BASE, "train_dataset": ds}
        first = c.post("/v1/jobs", json=spec)
        assert first.status_code == 201, first.text
        resp = c.post("/v1/jobs", json=spec)
        err = error(resp, 429)
        assert err["code"] == "too_many_active_jobs" and err["details"]["cap"] == 1
        assert int(resp.headers["Retry-After"]) >= 1
        assert c.get("/v1/jobs").json()["data"] == [first.json()]  # nothing was added
        c.post(f"/v1/jobs/{first.json()['id']}/cancel")
        assert c.post("/v1/jobs", json=spec).status_code == 201


# --- logging ----------------------------------------------------------------------------------


def test_keys_never_reach_the_logs(
    caplog: pytest.LogCaptureFixture, client: TestClient, anon_client: TestClient, build_app: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    made = client.post("/v1/keys", json={"scopes": ["predict"]}).json()
    key = made["key"]
    anon_client.get("/v1/datasets", headers=auth(key))  # a scope failure
    anon_client.get("/v1/datasets", headers=auth(key + "x"))  # an unknown key
    client.delete(f"/v1/keys/{made['id']}")
    anon_client.get("/v1/datasets", headers=auth(key))  # a revoked key
    boot = "boot-" + "s" * 40
    build_app(bootstrap_admin_key=boot)
    build_app(bootstrap_admin_key=boot)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in caplog.records)
    assert caplog.records, "expected some log records to inspect"
    for secret in (key, key + "x", boot, hash_key(key), hash_key(boot)):
        assert secret not in logged


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """TUNESERVE_DATA_DIR pointing at the migrated database; get_settings() read afresh."""
    monkeypatch.setenv("TUNESERVE_DATA_DIR", str(migrated.data_dir))
    monkeypatch.delenv("TUNESERVE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield migrated
    get_settings.cache_clear()


def run_cli(*args: str) -> Any:
    from app.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_cli_creates_lists_and_revokes_keys(cli_env: Settings, anon_client: TestClient) -> None:
    made = run_cli("keys", "create", "--tenant", "acme", "--scope", "predict", "--scope", "train")
    assert made.exit_code == 0, made.output
    header, key = made.output.strip().splitlines()
    key_id = re.match(r"created (key_[0-9a-f]+) \(tenant acme, scopes predict,train\)", header)
    assert key_id is not None and key.startswith("tsk_")
    assert anon_client.get("/v1/jobs", headers=auth(key)).status_code == 200

    listed = run_cli("keys", "list", "--tenant", "acme")
    assert listed.exit_code == 0, listed.output
    assert key_id[1] in listed.output and "active" in listed.output
    assert key not in listed.output and hash_key(key) not in listed.output

    revoked = run_cli("keys", "revoke", key_id[1])
    assert revoked.exit_code == 0 and f"revoked {key_id[1]}" in revoked.output
    assert "revoked 2" in run_cli("keys", "list").output  # the revocation date
    # The API remembers a valid key for lookup_cache_seconds; a revocation from outside the API
    # process takes effect within that time.
    window = cli_env.lookup_cache_seconds
    deadline = time.monotonic() + window + 5
    while (status := anon_client.get("/v1/jobs", headers=auth(key)).status_code) == 200:
        assert time.monotonic() < deadline, f"still accepted {window + 5} s after revocation"
        time.sleep(0.1)
    assert status == 401


def test_cli_refuses_bad_input(cli_env: Settings) -> None:
    missing = run_cli("keys", "revoke", "key_nope")
    assert missing.exit_code == 1 and "key_nope" in missing.output
    bad_scope = run_cli("keys", "create", "--scope", "root")
    assert bad_scope.exit_code == 2 and "scopes" in bad_scope.output
    no_scope = run_cli("keys", "create", "--tenant", "acme")
    assert no_scope.exit_code == 2
    bad_tenant = run_cli("keys", "create", "--tenant", "Not OK", "--scope", "admin")
    assert bad_tenant.exit_code == 2 and "tenant" in bad_tenant.output
