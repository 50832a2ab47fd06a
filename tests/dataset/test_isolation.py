"""The upload parsing processes: typed errors come back as they were raised, memory and time
limits cost the child (a 413 naming the setting), and the pool recovers and shuts down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.errors import InvalidInput, PayloadTooLarge
from app.dataset import isolation
from tests.conftest import REPO_ROOT, auth
from tests.dataset import parse_handlers as jobs
from tests.dataset.util import created, upload

BUDGET = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def pool() -> Iterator[isolation.ParserPool]:
    # Its own pool (children that import only the test jobs), not the suite's warm one.
    pool = isolation.ParserPool(warm=("tests.dataset.parse_handlers",))
    yield pool
    pool.close()


@pytest.fixture
def limits(tmp_path: Path, pool: isolation.ParserPool, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for isolation.run, which then runs its jobs in `pool`."""
    monkeypatch.setattr(isolation, "shared_pool", lambda: pool)
    return Settings(
        data_dir=tmp_path / "data",
        upload_parse_memory_bytes=BUDGET,
        upload_parse_timeout_seconds=20,
        upload_parse_workers=1,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child not yet reaped is a zombie: gone for our purposes.
    return "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_results_cross_as_json_and_the_child_is_reused(limits: Settings) -> None:
    first = isolation.run(jobs.whoami, {"a": [1, "b"]}, settings=limits)
    second = isolation.run(jobs.whoami, {}, settings=limits)
    assert first["echo"] == {"a": [1, "b"]}
    assert first["pid"] == second["pid"] != os.getpid()


def test_service_errors_come_back_as_the_same_type(limits: Settings) -> None:
    with pytest.raises(InvalidInput) as refused:
        isolation.run(jobs.refuse, {}, settings=limits)
    assert (refused.value.status_code, refused.value.code) == (422, "empty_cell")
    assert refused.value.message == "row 3: column 'text' is empty"
    assert refused.value.details == {"row": 3, "field": "text"}
    with pytest.raises(PayloadTooLarge) as large:
        isolation.run(jobs.too_large, {}, settings=limits)
    assert (large.value.status_code, large.value.code) == (413, "decoded_too_large")
    assert large.value.details == {"limit": 5}


def test_a_bug_in_a_parser_stays_a_500(limits: Settings) -> None:
    with pytest.raises(RuntimeError, match="ValueError: a bug in a parser"):
        isolation.run(jobs.crash, {}, settings=limits)


def test_memory_past_the_budget_is_413_and_the_child_is_replaced(limits: Settings) -> None:
    # Within the budget (beyond what the child held before the job): fine.
    held = isolation.run(jobs.allocate, {"mib": 64}, settings=limits)
    with pytest.raises(PayloadTooLarge) as exc:
        isolation.run(jobs.allocate, {"mib": 512}, settings=limits)
    assert exc.value.code == "parse_memory"
    assert "needs more memory to parse than the server allows" in exc.value.message
    assert f"{BUDGET} bytes (upload_parse_memory_bytes)" in exc.value.message
    assert exc.value.details == {"field": "file", "limit": BUDGET}
    after = isolation.run(jobs.whoami, {}, settings=limits)
    assert after["pid"] != held["pid"]
    assert not alive(held["pid"])


def test_a_memory_error_wrapped_by_the_parser_is_still_memory(limits: Settings) -> None:
    with pytest.raises(PayloadTooLarge) as exc:
        isolation.run(jobs.allocate_and_wrap, {"mib": 512}, settings=limits)
    assert exc.value.code == "parse_memory"


def test_a_killed_child_is_413_and_the_next_upload_gets_a_new_one(limits: Settings) -> None:
    before = isolation.run(jobs.whoami, {}, settings=limits)["pid"]
    with pytest.raises(PayloadTooLarge) as exc:
        isolation.run(jobs.die, {}, settings=limits)
    assert exc.value.code == "parse_memory"
    assert "killed: SIGKILL" in exc.value.message
    assert isolation.run(jobs.whoami, {}, settings=limits)["pid"] != before


def test_a_job_past_the_time_limit_is_killed_and_413(limits: Settings) -> None:
    quick = limits.model_copy(update={"upload_parse_timeout_seconds": 0.5})
    child = isolation.run(jobs.whoami, {}, settings=quick)["pid"]
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge) as exc:
        isolation.run(jobs.sleep, {"seconds": 60}, settings=quick)
    assert time.monotonic() - started < 30
    assert exc.value.code == "parse_timeout"
    assert "0.5 seconds (upload_parse_timeout_seconds)" in exc.value.message
    assert not alive(child)
    assert isolation.run(jobs.whoami, {}, settings=quick)["pid"] != child


def test_a_child_stuck_at_its_memory_limit_is_killed_and_413(limits: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge) as exc:
        isolation.run(jobs.fill_and_hang, {"seconds": 60}, settings=limits)
    assert time.monotonic() - started < 30
    assert exc.value.code == "parse_memory"


def test_a_job_gets_a_cpu_limit_of_its_time_limit(limits: Settings) -> None:
    seen = isolation.run(jobs.cpu_limit, {}, settings=limits)
    assert seen["used"] + 20 <= seen["soft"] <= seen["used"] + 22
    # Lifted between jobs; a child the kernel stopped for CPU time answers as a timeout.
    with pytest.raises(PayloadTooLarge) as exc:
        isolation.run(jobs.out_of_cpu, {}, settings=limits)
    assert exc.value.code == "parse_timeout"


def test_at_most_upload_parse_workers_jobs_run_at_once(limits: Settings) -> None:
    isolation.run(jobs.whoami, {}, settings=limits)  # a warm child, so only the jobs are timed
    started = time.monotonic()
    with ThreadPoolExecutor(2) as threads:
        runs = [
            threads.submit(isolation.run, jobs.sleep, {"seconds": 0.5}, settings=limits)
            for _ in range(2)
        ]
        pids = {run.result()["pid"] for run in runs}
    # One slot: the second job waited for the first, in the same (one) child.
    assert time.monotonic() - started >= 1.0
    assert len(pids) == 1


ORPHAN = """
from app.dataset import isolation
from tests.dataset import parse_handlers as jobs

if __name__ == "__main__":
    pool = isolation.ParserPool(warm=("tests.dataset.parse_handlers",))
    limits = {"memory_bytes": 1 << 28, "timeout_seconds": 600, "slots": 1}
    print(pool.call(jobs.whoami, {}, **limits)["pid"], flush=True)
    pool.call(jobs.sleep, {"seconds": 600}, **limits)
"""


def test_a_child_ends_when_the_api_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "api.py"
    script.write_text(ORPHAN)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    api = subprocess.Popen(
        [sys.executable, str(script)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert api.stdout is not None
        child = int(api.stdout.readline())
        time.sleep(0.5)  # the child is in its 600-second job now
    finally:
        api.kill()
        api.wait()
    deadline = time.monotonic() + 20
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)


def test_the_last_app_to_stop_ends_the_parsing_processes(  # type: ignore[no-untyped-def]
    app, admin_key, monkeypatch
) -> None:
    # As if this app were alone in the process (the test session holds the shared pool).
    monkeypatch.setattr(isolation, "_pool", None)
    monkeypatch.setattr(isolation, "_holders", 0)
    with TestClient(app, headers=auth(admin_key)) as client:
        created(upload(client, b"text,label\na,x\nb,y\n"))
        pool = isolation._pool
        assert pool is not None
        (child,) = pool.pids
        assert alive(child)
    assert isolation._pool is None
    assert not alive(child)
