"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright; nothing is
downloaded): sign in, upload a dataset, submit a job from the form, watch its progress bar and loss
curve move, open the model, see the confusion matrix, try a prediction, move an alias, sign out.

Screenshots of each page go to $TUNESERVE_SCREENSHOTS (default: build/screenshots in the
repository) for a developer to look at.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.service import Service
from tests.e2e.test_classification_e2e import sst2_slice

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("TUNESERVE_SCREENSHOTS", REPO / "build" / "screenshots"))
ROWS = 400
JOB_TIMEOUT_MS = 600_000


def chromium_path() -> str:
    """Debian's chromium; the test is skipped without one unless TUNESERVE_REQUIRE_BROWSER is set
    (as .ci/run does, after installing it), when a missing browser fails it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("TUNESERVE_REQUIRE_BROWSER"):
        pytest.fail("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.fixture
def page(e2e_service: Service) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on(
            "console",
            lambda msg: errors.append(msg.text) if msg.type == "error" else None,
        )
        yield tab
        browser.close()
        # No script error and no Content-Security-Policy violation on any page.
        assert errors == [], errors


def shot(tab: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_a_user_trains_watches_tries_and_aliases_a_model_in_the_browser(
    e2e_client: httpx.Client, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    base = str(e2e_client.base_url).rstrip("/")
    key = e2e_client.headers["Authorization"].removeprefix("Bearer ")
    train = tmp_path / "sst2-train.tsv"
    train.write_bytes(sst2_slice("train.tsv", ROWS)[0])

    page.goto(f"{base}/ui")
    expect(page).to_have_url(f"{base}/ui/login?next=%2Fui")
    shot(page, "01-login")
    page.fill("#api_key", key)
    page.click("#signin")
    expect(page).to_have_url(f"{base}/ui/jobs")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tuneserve_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and key not in cookie["value"]

    page.click("nav >> text=Datasets")
    page.set_input_files("#upload-file", str(train))
    page.select_option("#upload-task", "classification")
    page.fill("#upload-name", "SST-2 <first 400>")
    page.click("#upload")
    expect(page.locator("h1")).to_contain_text("SST-2 <first 400>")  # shown as text
    expect(page.locator("#label-bars rect")).to_have_count(2)
    expect(page.locator("#rows tbody tr")).to_have_count(50)
    shot(page, "02-dataset")

    page.select_option("#job-method", "full")
    expect(page.locator("#job-learning_rate")).to_have_value("0.0002")
    page.fill("#job-epochs", "1")
    page.fill("#job-max_length", "64")
    page.click("#job-submit")
    expect(page.locator("h1")).to_contain_text("Job")
    # The bar and the loss curve move while the job runs (the page follows its event stream).
    page.wait_for_function(
        "() => Number(document.getElementById('chart-loss').dataset.points || 0) >= 2",
        timeout=JOB_TIMEOUT_MS,
    )
    first = float(page.locator("#job-progress").get_attribute("value") or 0)
    shot(page, "03-job-running")
    page.wait_for_function(
        f"() => Number(document.getElementById('job-progress').value) > {first}",
        timeout=JOB_TIMEOUT_MS,
    )
    # At the end the page reloads with the result.
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-model")).to_be_visible()
    assert int(page.locator("#chart-loss").get_attribute("data-points") or 0) >= 5
    shot(page, "04-job-done")

    page.click("#job-model")
    expect(page.locator("#confusion rect")).to_have_count(4)
    expect(page.locator("#breakdown")).to_be_visible()
    page.fill("#alias-name", "production")
    force = page.locator("input[name=force]")
    if force.count():  # a model no better than the baseline needs the explicit tick
        force.check()
    page.click("#alias-move")
    expect(page.locator("h1 .alias")).to_have_text("production")
    model_id = page.url.rsplit("/", 1)[1]
    page.fill("#try-text", "a moving, beautifully acted film")
    page.click("#try")
    expect(page.locator("#answer")).to_be_visible()
    expect(page.locator("#answer td").first).to_have_text(re.compile(r"^[01]$"))
    shot(page, "05-model")
    assert e2e_client.get("/v1/aliases/production").json()["model"] == model_id

    page.click("#signout")
    expect(page).to_have_url(f"{base}/ui/login")
    page.goto(f"{base}/ui/models")
    expect(page).to_have_url(f"{base}/ui/login?next=%2Fui%2Fmodels")
