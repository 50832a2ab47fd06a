"""The dashboard through the real app: sign-in and sessions, CSRF, escaping, scopes and tenants on
every page, forms that upload, submit, cancel and move aliases, and the live event stream."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.models import Job, Model, new_id
from tests.conftest import auth, create_api_key
from tests.ui.conftest import csrf_of, sign_in

BASE = "sentence-transformers/all-MiniLM-L6-v2"
EVIL = "<img src=x onerror=alert(1)>"
CSV = "text,label\n" + "".join(f"good text {i},pos\nbad text {i},{EVIL}\n" for i in range(8))


def upload(client: TestClient, name: str = EVIL) -> dict[str, Any]:
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification", "name": name},
        files={"file": ("rows.csv", io.BytesIO(CSV.encode()), "text/csv")},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def register_model(app, tenant: str = "default", **fields: Any) -> str:  # type: ignore[no-untyped-def]
    model_id = new_id("mdl")
    metrics = {
        "accuracy": 0.75,
        "macro_f1": 0.74,
        "per_class": {
            "pos": {"precision": 0.8, "recall": 0.7, "f1": 0.7467, "support": 10},
            EVIL: {"precision": 0.7, "recall": 0.8, "f1": 0.7467, "support": 10},
        },
        "confusion_matrix": [[7, 3], [2, 8]],
    }
    with app.state.sessionmaker() as s:
        s.add(
            Model(
                id=model_id,
                tenant_id=tenant,
                task="classification",
                base_model=BASE,
                method="lora",
                label_names=["pos", EVIL],
                metrics=metrics,
                baseline_metrics={"accuracy": 0.5, "macro_f1": 1 / 3},
                job_id=new_id("job"),
                train_dataset_id="ds_x",
                storage_path=f"models/{model_id}",
                **({"quality": "better_than_baseline"} | fields),
            )
        )
        s.commit()
    return model_id


def test_pages_need_a_session_and_send_you_back_after_signing_in(browser, admin_key):  # type: ignore[no-untyped-def]
    resp = browser.get(
        "/ui/models?task=ner", headers={"Accept": "text/html"}, follow_redirects=False
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ui/login?next=%2Fui%2Fmodels%3Ftask%3Dner"
    # A script's request (no HTML wanted) gets 401, not a login page.
    assert browser.get("/ui/jobs/rows").status_code == 401
    form = browser.get("/ui/login?next=/ui/models?task=ner")
    resp = browser.post(
        "/ui/login",
        data={
            "api_key": admin_key,
            "csrf_token": csrf_of(form.text),
            "next": "/ui/models?task=ner",
        },
        follow_redirects=False,
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/models?task=ner"
    # Only dashboard paths: never another site.
    for target in ("https://evil.example/", "//evil.example/", "/v1/keys", "/ui//evil.example"):
        form = browser.get("/ui/login")
        resp = browser.post(
            "/ui/login",
            data={"api_key": admin_key, "csrf_token": csrf_of(form.text), "next": target},
            follow_redirects=False,
        )
        assert resp.headers["location"] == "/ui/jobs", target


def test_the_session_cookie_is_httponly_strict_and_never_the_key(browser, admin_key):  # type: ignore[no-untyped-def]
    form = browser.get("/ui/login")
    assert "httponly" in form.headers["set-cookie"].lower()
    resp = browser.post(
        "/ui/login",
        data={"api_key": admin_key, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    cookies = resp.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("tuneserve_session="))
    lowered = session.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/ui" in lowered
    assert admin_key not in " ".join(cookies)
    assert "secure" not in lowered  # plain http here; https gets Secure ("auto")
    page = browser.get("/ui/jobs")
    assert admin_key not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"


def test_a_wrong_key_or_a_stale_login_form_is_refused(browser):  # type: ignore[no-untyped-def]
    form = browser.get("/ui/login")
    bad = browser.post("/ui/login", data={"api_key": "tsk_nope", "csrf_token": csrf_of(form.text)})
    assert bad.status_code == 401 and "not valid" in bad.text
    stale = browser.post("/ui/login", data={"api_key": "tsk_nope", "csrf_token": "forged"})
    assert stale.status_code == 403 and "expired" in stale.text
    assert "tuneserve_session" not in browser.cookies


def test_sign_out_and_revoking_the_key_end_the_session(app, migrated, browser, client):  # type: ignore[no-untyped-def]
    key = create_api_key(migrated, scopes=("admin",))
    csrf = sign_in(browser, key)
    cookie = browser.cookies.get("tuneserve_session")
    # Without the token, sign-out is refused (a cross-site form cannot sign you out either).
    assert browser.post("/ui/logout", data={}).status_code == 403
    assert browser.post("/ui/logout", data={"csrf_token": csrf}).status_code == 200  # the form
    assert browser.get("/ui/jobs/rows").status_code == 401
    # The old cookie is dead on the server too, not only gone from this browser.
    browser.cookies.set("tuneserve_session", cookie, path="/ui")
    assert browser.get("/ui/jobs/rows").status_code == 401

    sign_in(browser, key)
    key_id = next(
        k["id"] for k in client.get("/v1/keys").json()["data"] if key.startswith(k["prefix"])
    )
    assert client.delete(f"/v1/keys/{key_id}").status_code in (200, 204)
    assert browser.get("/ui/jobs/rows").status_code == 401


def test_user_text_is_escaped_everywhere_it_shows(app, client, signed_in):  # type: ignore[no-untyped-def]
    browser, csrf = signed_in
    ds = upload(client)
    model_id = register_model(app)
    job = client.post(
        "/v1/jobs", json={"task": "classification", "base_model": BASE, "train_dataset": ds["id"]}
    ).json()
    for path in (
        "/ui/datasets",
        f"/ui/datasets/{ds['id']}",
        f"/ui/models/{model_id}",
        f"/ui/jobs/{job['id']}",
    ):
        page = browser.get(path)
        assert page.status_code == 200, (path, page.text)
        assert EVIL not in page.text, path
    assert "&lt;img src=x onerror=alert(1)&gt;" in browser.get(f"/ui/datasets/{ds['id']}").text
    # In the model page's per-class table and heat map too.
    model_page = browser.get(f"/ui/models/{model_id}").text
    assert model_page.count("&lt;img src=x onerror=alert(1)&gt;") >= 3


def test_forms_without_the_csrf_token_change_nothing(app, client, signed_in):  # type: ignore[no-untyped-def]
    browser, csrf = signed_in
    ds = upload(client, name="plain")
    job = client.post(
        "/v1/jobs", json={"task": "classification", "base_model": BASE, "train_dataset": ds["id"]}
    ).json()
    model_id = register_model(app)
    attempts = [
        (f"/ui/jobs/{job['id']}/cancel", {}),
        (f"/ui/models/{model_id}/alias", {"name": "production"}),
        (f"/ui/models/{model_id}/predict", {"text": "hi"}),
        ("/ui/jobs", {"task": "classification", "base_model": BASE, "train_dataset": ds["id"]}),
    ]
    for path, data in attempts:
        for token in (None, "forged", csrf[:-2]):
            body = data | ({"csrf_token": token} if token else {})
            resp = browser.post(path, data=body, follow_redirects=False)
            assert resp.status_code == 403 and "CSRF" in resp.text, (path, token)
    resp = browser.post(
        "/ui/datasets",
        data={"task": "classification"},
        files={"file": ("a.csv", io.BytesIO(CSV.encode()), "text/csv")},
    )
    assert resp.status_code == 403
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert client.get("/v1/aliases").json()["data"] == []
    assert len(client.get("/v1/jobs").json()["data"]) == 1
    assert len(client.get("/v1/datasets").json()["data"]) == 1


def test_forms_upload_submit_cancel_and_move_an_alias(app, client, queue, signed_in):  # type: ignore[no-untyped-def]
    browser, csrf = signed_in
    resp = browser.post(
        "/ui/datasets",
        data={"task": "classification", "name": "from the form", "csrf_token": csrf},
        files={"file": ("a.csv", io.BytesIO(CSV.encode()), "text/csv")},
        follow_redirects=False,
    )
    assert resp.status_code == 303, resp.text
    ds_id = resp.headers["location"].rsplit("/", 1)[1]
    page = browser.get(f"/ui/datasets/{ds_id}").text
    assert "from the form" in page and "good text 0" in page and 'id="label-bars"' in page
    # The form's defaults are the service's own, per method.
    assert 'id="job-learning_rate" value="0.0002"' in page

    resp = browser.post(
        "/ui/jobs",
        data={
            "csrf_token": csrf, "task": "classification", "base_model": BASE,
            "train_dataset": ds_id, "method": "lora", "epochs": "1", "learning_rate": "",
        },
        follow_redirects=False,
    )  # fmt: skip
    assert resp.status_code == 303, resp.text
    job_id = resp.headers["location"].rsplit("/", 1)[1]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["method"]["type"] == "lora" and job["hyperparameters"]["epochs"] == 1
    assert job["hyperparameters"]["learning_rate"] == 2e-3  # left empty: the method's default
    assert queue.enqueued == [job_id]
    rows = browser.get("/ui/jobs/rows").text
    assert job_id in rows and 'data-status="queued"' in rows

    bad = browser.post(
        "/ui/jobs",
        data={"csrf_token": csrf, "task": "classification", "base_model": BASE,
              "train_dataset": ds_id, "epochs": "-3"},
    )  # fmt: skip
    assert bad.status_code == 422 and "epochs" in bad.text

    resp = browser.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    assert resp.status_code == 200 and "cancelled" in resp.text
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"

    weak = register_model(app, quality="no_better_than_baseline")
    refused = browser.post(f"/ui/models/{weak}/alias", data={"csrf_token": csrf, "name": "prod"})
    assert refused.status_code == 409 and "baseline" in refused.text
    moved = browser.post(
        f"/ui/models/{weak}/alias", data={"csrf_token": csrf, "name": "prod", "force": "on"}
    )
    assert moved.status_code == 200
    assert client.get("/v1/aliases/prod").json()["model"] == weak


def test_model_page_shows_the_breakdown_heat_map_lineage_and_compares(app, signed_in):  # type: ignore[no-untyped-def]
    browser, _ = signed_in
    a, b = register_model(app), register_model(app)
    page = browser.get(f"/ui/models/{a}").text
    assert 'id="breakdown"' in page and 'id="confusion"' in page and 'id="lineage"' in page
    assert page.count("<rect") == 4 and ">8</text>" in page  # 2x2 cells, counts written in
    listing = browser.get("/ui/models").text
    assert a in listing and b in listing
    compared = browser.get("/ui/models/compare", params=[("ids", a), ("ids", b)])
    assert compared.status_code == 200 and "F1 · pos" in compared.text
    assert browser.get("/ui/models/compare", params={"ids": a}).status_code == 422


@pytest.mark.parametrize(
    ("scopes", "allowed", "refused"),
    [
        (("predict",), [], ["/ui/jobs", "/ui/models", "/ui/datasets"]),
        (("jobs:read",), ["/ui/jobs"], ["/ui/models", "/ui/datasets"]),
        (("models:read", "predict"), ["/ui/models"], ["/ui/jobs", "/ui/datasets"]),
        (("data:write",), ["/ui/datasets"], ["/ui/jobs", "/ui/models"]),
    ],
)
def test_a_key_sees_exactly_its_scopes(app, migrated, browser, scopes, allowed, refused):  # type: ignore[no-untyped-def]
    sign_in_any(browser, create_api_key(migrated, scopes=scopes))
    for path in allowed:
        assert browser.get(path).status_code == 200, path
    for path in refused:
        page = browser.get(path)
        assert page.status_code == 403 and "scope" in page.text, path
    nav = browser.get(refused[0]).text  # every page shows links to what the key may open
    assert 'href="/ui/login"' not in nav and "Sign out" in nav
    for path in allowed:
        assert f'href="{path}"' in nav
    for path in refused:
        assert f'href="{path}"' not in nav


def test_another_tenants_ids_are_not_found(app, migrated, client, browser):  # type: ignore[no-untyped-def]
    ds = upload(client, name="mine")
    job = client.post(
        "/v1/jobs", json={"task": "classification", "base_model": BASE, "train_dataset": ds["id"]}
    ).json()
    model_id = register_model(app)
    sign_in_any(browser, create_api_key(migrated, tenant="other", scopes=("admin",)))
    for path in (
        f"/ui/jobs/{job['id']}",
        f"/ui/jobs/{job['id']}/events",
        f"/ui/models/{model_id}",
        f"/ui/datasets/{ds['id']}",
    ):
        assert browser.get(path).status_code == 404, path
    assert job["id"] not in browser.get("/ui/jobs").text
    assert model_id not in browser.get("/ui/models").text
    token = csrf_of(browser.get("/ui/jobs").text)
    assert (
        browser.post(f"/ui/jobs/{job['id']}/cancel", data={"csrf_token": token}).status_code == 404
    )
    with TestClient(app, headers=auth(create_api_key(migrated))) as owner:
        assert owner.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_the_page_stream_resumes_after_what_the_page_shows(app, client, signed_in):  # type: ignore[no-untyped-def]
    browser, _ = signed_in
    ds = upload(client, name="s")
    job = client.post(
        "/v1/jobs", json={"task": "classification", "base_model": BASE, "train_dataset": ds["id"]}
    ).json()
    page = browser.get(f"/ui/jobs/{job['id']}").text
    assert f"/ui/jobs/{job['id']}/events?after=" in page
    after = int(page.split("/events?after=")[1].split('"')[0])
    assert after > 0  # the queued event is on the page already
    with app.state.sessionmaker() as s:
        s.get(Job, job["id"]).status = "cancelled"
        s.commit()
    resp = browser.get(f"/ui/jobs/{job['id']}/events", params={"after": after})
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "event: status" not in resp.text and "event: end" in resp.text
    resp = browser.get(f"/ui/jobs/{job['id']}/events", headers={"Last-Event-ID": "0"})
    assert resp.text.count("event: status") == 1


def sign_in_any(browser: TestClient, key: str) -> None:
    form = browser.get("/ui/login")
    resp = browser.post(
        "/ui/login",
        data={"api_key": key, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert resp.status_code == 303


def ui_routes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, path) of every dashboard route but the static files and the sign-in form."""
    from fastapi.routing import iter_route_contexts

    found = []
    for route in iter_route_contexts(app.routes):
        path = str(route.path)
        methods = getattr(route, "methods", None)
        if not path.startswith("/ui") or path.startswith("/ui/static") or not methods:
            continue
        if path in ("/ui/login",):
            continue
        found += [(m, path) for m in sorted(set(methods) - {"HEAD"})]
    return found


def test_every_dashboard_route_needs_a_session_and_hides_other_tenants(  # type: ignore[no-untyped-def]
    app, migrated, client, browser
):
    ds = upload(client, name="mine")
    job = client.post(
        "/v1/jobs", json={"task": "classification", "base_model": BASE, "train_dataset": ds["id"]}
    ).json()
    ids = {"job_id": job["id"], "model_id": register_model(app), "dataset_id": ds["id"]}
    routes = ui_routes(app)
    assert len(routes) >= 14, routes
    for method, path in routes:
        resp = browser.request(method, path.format(**ids), follow_redirects=False)
        assert resp.status_code in (303, 401), (method, path, resp.status_code)
    sign_in_any(browser, create_api_key(migrated, tenant="other", scopes=("admin",)))
    token = csrf_of(browser.get("/ui/datasets").text)
    for method, path in routes:
        if "{" not in path:
            continue
        url = path.format(**ids)
        data = {"csrf_token": token, "name": "x", "text": "x"} if method == "POST" else None
        resp = browser.request(method, url, data=data)
        assert resp.status_code == 404, (method, path, resp.status_code, resp.text[:300])
        assert "mine" not in resp.text
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert client.get("/v1/aliases").json()["data"] == []
