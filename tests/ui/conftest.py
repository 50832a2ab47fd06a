"""Dashboard tests: a browser-like client that signs in through the form."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Sign in through the form; the session's CSRF token (from the next page's forms)."""
    form = client.get("/ui/login")
    resp = client.post(
        "/ui/login",
        data={"api_key": key, "csrf_token": csrf_of(form.text), "next": "/ui/datasets"},
        follow_redirects=False,
    )
    assert resp.status_code == 303, resp.text
    page = client.get("/ui/datasets")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


@pytest.fixture
def browser(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """A client with no API key header: it holds cookies, as a browser does."""
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def signed_in(browser, admin_key) -> tuple[TestClient, str]:  # type: ignore[no-untyped-def]
    return browser, sign_in(browser, admin_key)


Login = Callable[[str], tuple[TestClient, str]]
