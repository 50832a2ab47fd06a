"""Properties, found by hypothesis: the job state machine, idempotent submits, tenant isolation.

The job machine drives jobs through the API (submit, cancel), the worker's state functions
(claim_job, AttemptFence writes, including stale fences of earlier attempts) and the reaper on a
fake clock, and checks after every step that only legal transitions happened.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from app.core.config import Settings
from app.db.models import EventType, Job, JobEvent, JobStatus, Model, new_id, utcnow
from app.db.session import session_scope
from app.job.reaper import reap
from tests.conftest import RecordingQueue, auth, create_api_key
from worker.training.state import AttemptFence, FenceLost, JobCancelled, claim_job

pytestmark = pytest.mark.slow  # a fuzzer: in the default suite, not in `-m fast`

BASE = "sentence-transformers/all-MiniLM-L6-v2"
CSV = b"text,label\n" + b"".join(f"good {i},pos\nbad {i},neg\n".encode() for i in range(6))
# HYPOTHESIS_SCALE=10 runs ten times the examples; the defaults keep this file well under 60 s.
SCALE = float(os.environ.get("HYPOTHESIS_SCALE", "1"))
Q, R = JobStatus.QUEUED, JobStatus.RUNNING
LEGAL = {
    (Q, R),
    (Q, JobStatus.CANCELLED),
    (R, JobStatus.SUCCEEDED),
    (R, JobStatus.FAILED),
    (R, JobStatus.CANCELLED),
    (R, Q),  # re-queued: the worker stopped or went silent
}
TENANTS = ("t-a", "t-b", "t-c")


@dataclass
class Env:
    """One migrated database and app for the whole module; examples add rows, never reset."""

    app: Any
    settings: Settings
    clients: dict[str, TestClient]
    datasets: dict[str, str]
    owned: dict[str, set[str]] = field(default_factory=dict)
    serial: Iterator[int] = field(default_factory=itertools.count)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from app.db.migrate import upgrade
    from app.main import create_app

    conf = Settings(
        data_dir=tmp_path_factory.mktemp("props") / "data",
        redis_url=None,
        max_active_jobs_per_tenant=0,  # jobs pile up across examples
        rate_limit_per_minute=0,
        max_attempts=3,
    )
    upgrade(conf)
    application = create_app(conf, queue=RecordingQueue())
    clients = {t: TestClient(application, headers=auth(create_api_key(conf, t))) for t in TENANTS}
    datasets = {}
    for tenant, c in clients.items():
        resp = c.post("/v1/datasets", data={"task": "classification"}, files={"file": ("a", CSV)})
        assert resp.status_code == 201, resp.text
        datasets[tenant] = resp.json()["id"]
    owned = {t: {datasets[t]} for t in TENANTS}
    yield Env(application, conf, clients, datasets, owned)
    application.state.engine.dispose()


def spec(dataset: str, **extra: Any) -> dict[str, Any]:
    return {"task": "classification", "base_model": BASE, "train_dataset": dataset, **extra}


# --- the job state machine --------------------------------------------------------------------


@dataclass
class Seen:
    status: str
    attempt: int


class JobMachine(RuleBasedStateMachine):
    # Transitions seen over all examples: the test checks the machine reached every legal one.
    observed: Counter[tuple[str, str]] = Counter()

    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        self.client = env.clients["t-a"]
        self.factory = env.app.state.sessionmaker
        self.seen: dict[str, Seen] = {}
        # Every attempt ever claimed; old ones stay, to try writing through stale fences.
        self.fences: list[AttemptFence] = []

    def _job(self, data: st.DataObject, *, prefer: str) -> str:
        """Any job, or (more often than chance) one in status `prefer`."""
        preferred = [j for j, seen in self.seen.items() if seen.status == prefer]
        if preferred and data.draw(st.booleans(), label=f"a {prefer} job"):
            return data.draw(st.sampled_from(preferred), label="job")
        return data.draw(st.sampled_from(list(self.seen)), label="job")

    @rule()
    def submit(self) -> None:
        resp = self.client.post("/v1/jobs", json=spec(self.env.datasets["t-a"]))
        assert resp.status_code == 201, resp.text
        self.seen[resp.json()["id"]] = Seen(JobStatus.QUEUED, 0)

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        """A worker receives the job's message (perhaps a duplicate, perhaps too late)."""
        job_id = self._job(data, prefer=JobStatus.QUEUED)
        with session_scope(self.factory) as session:
            attempt = claim_job(session, job_id=job_id, worker="w")
        if attempt is None:
            assert self.seen[job_id].status != JobStatus.QUEUED, "a queued job was not claimed"
            return
        assert attempt == self.seen[job_id].attempt + 1
        self.fences.append(
            AttemptFence(self.factory, job_id=job_id, attempt=attempt, db_retry_seconds=1)
        )

    def _fence(self, data: st.DataObject) -> AttemptFence:
        # Mostly the newest attempt (a live worker), sometimes any (a stale one, fenced off).
        if data.draw(st.booleans(), label="newest"):
            return self.fences[-1]
        return data.draw(st.sampled_from(self.fences), label="fence")

    def _work(self, fence: AttemptFence, write: Callable[[], object]) -> None:
        """Run a worker's write as worker/jobs.py does: stop on cancel, give up when fenced off."""
        try:
            write()
        except JobCancelled:
            fence.finish(JobStatus.CANCELLED, "job cancelled")
        except FenceLost:
            self._assert_stale(fence)

    @precondition(lambda self: self.fences)
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        """The training callback: a heartbeat, and a stop if cancellation was requested."""
        fence = self._fence(data)
        self._work(fence, fence.raise_if_cancelled)

    @precondition(lambda self: self.fences)
    @rule(data=st.data())
    def succeed(self, data: st.DataObject) -> None:
        fence = self._fence(data)
        self._work(fence, lambda: fence.succeed(self._model(fence.job_id), metrics={"acc": 1.0}))

    @precondition(lambda self: self.fences)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        fence = self._fence(data)
        self._work(fence, lambda: fence.finish(JobStatus.FAILED, "job failed", error_code="x"))

    @precondition(lambda self: self.fences)
    @rule(data=st.data())
    def worker_stops(self, data: st.DataObject) -> None:
        """The worker shuts down and hands its attempt back to the queue."""
        fence = self._fence(data)
        self._work(fence, lambda: fence.requeue("the worker stopped"))

    def _model(self, job_id: str) -> Model:
        return Model(
            id=new_id("mdl"),
            tenant_id="t-a",
            task="classification",
            base_model=BASE,
            method="full",
            label_names=["neg", "pos"],
            job_id=job_id,
            train_dataset_id=self.env.datasets["t-a"],
            storage_path="models/none",
        )

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = self._job(data, prefer=JobStatus.RUNNING)
        resp = self.client.post(f"/v1/jobs/{job_id}/cancel")
        if self.seen[job_id].status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            assert resp.status_code == 409, resp.text
        else:
            assert resp.status_code == 200, resp.text

    @rule(silent=st.sampled_from([False, False, True]))
    def reaper(self, silent: bool) -> None:
        """One reaper pass; `silent` moves the clock past every heartbeat's timeout."""
        skew = self.env.settings.heartbeat_timeout_seconds + 1 if silent else 0
        with self.factory() as session:
            reap(
                session,
                settings=self.env.settings,
                queue=self.env.app.state.queue,
                now=utcnow() + timedelta(seconds=skew),
            )

    def _assert_stale(self, fence: AttemptFence) -> None:
        with self.factory() as session:
            job = session.get(Job, fence.job_id)
            assert job is not None
            assert job.status != JobStatus.RUNNING or job.attempt != fence.attempt

    @invariant()
    def only_legal_transitions(self) -> None:
        if not self.seen:
            return
        with self.factory() as session:
            rows = session.execute(
                select(Job.id, Job.status, Job.attempt, Job.model_id).where(
                    Job.id.in_(list(self.seen))
                )
            ).all()
            models = dict(
                session.execute(
                    select(Model.job_id, func.count())
                    .where(Model.job_id.in_(list(self.seen)))
                    .group_by(Model.job_id)
                ).all()
            )
            events: dict[str, list[str]] = {}
            for job_id, data in session.execute(
                select(JobEvent.job_id, JobEvent.data)
                .where(JobEvent.job_id.in_(list(self.seen)), JobEvent.type == EventType.STATUS)
                .order_by(JobEvent.id)
            ):
                events.setdefault(job_id, []).append(data["status"])
        for job_id, status, attempt, model_id in rows:
            before = self.seen[job_id]
            if status != before.status:
                assert (before.status, status) in LEGAL, f"{job_id}: {before.status} -> {status}"
                JobMachine.observed[(before.status, status)] += 1
            assert attempt >= before.attempt, f"{job_id}: attempt {before.attempt} -> {attempt}"
            count = models.get(job_id, 0)
            assert count <= 1, f"{job_id} has {count} models"
            assert (count == 1) == (status == JobStatus.SUCCEEDED) == (model_id is not None)
            # The recorded history is a legal path from queued that ends where the row is.
            history = events[job_id]
            assert history[0] == Q and history[-1] == status, history
            assert all(pair in LEGAL for pair in itertools.pairwise(history)), history
            self.seen[job_id] = Seen(status, attempt)


def test_job_state_machine(env: Env) -> None:
    JobMachine.observed.clear()

    def factory() -> JobMachine:
        return JobMachine(env)

    if SCALE <= 1:
        # The short run is the same every time, so its coverage check below cannot flake;
        # HYPOTHESIS_SCALE > 1 explores new sequences on every run.
        factory = seed(int(os.environ.get("JOB_MACHINE_SEED", "4")))(factory)
    run_state_machine_as_test(
        factory,
        settings=settings(
            max_examples=int(80 * SCALE),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    print("job machine transitions:", dict(JobMachine.observed))
    assert set(JobMachine.observed) == LEGAL, "the machine missed some transitions"


# --- idempotent submits -----------------------------------------------------------------------

bodies = st.fixed_dictionaries(
    {},
    optional={
        "seed": st.integers(0, 2**32 - 1),
        "hyperparameters": st.fixed_dictionaries(
            {}, optional={"epochs": st.floats(0.5, 5), "batch_size": st.integers(1, 64)}
        ),
        "method": st.one_of(
            st.just({"type": "full"}),
            st.builds(lambda r: {"type": "lora", "r": r}, st.integers(1, 64)),
        ),
    },
)
# Visible ASCII: what a header value can carry unchanged (spaces at the ends would be trimmed).
keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200)


@settings(max_examples=int(40 * SCALE), deadline=None)
@given(key=keys, body=bodies, other=bodies, repeats=st.integers(2, 3), reorder=st.booleans())
def test_same_key_and_body_always_give_the_same_job(
    env: Env, key: str, body: dict[str, Any], other: dict[str, Any], repeats: int, reorder: bool
) -> None:
    client = env.clients["t-b"]
    # Examples share one database: a serial number keeps their keys apart.
    headers = {"Idempotency-Key": f"{next(env.serial)}:{key}"}
    first = client.post("/v1/jobs", json=spec(env.datasets["t-b"], **body), headers=headers)
    assert first.status_code == 201, first.text
    for _ in range(repeats):
        again_body = spec(env.datasets["t-b"], **body)
        if reorder:
            again_body = dict(reversed(list(again_body.items())))
        again = client.post("/v1/jobs", json=again_body, headers=headers)
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
    changed = client.post("/v1/jobs", json=spec(env.datasets["t-b"], **other), headers=headers)
    same = spec(env.datasets["t-b"], **other) == spec(env.datasets["t-b"], **body)
    if same:
        assert changed.json() == first.json()
    else:
        assert changed.status_code == 422
        assert changed.json()["error"]["code"] == "idempotency_key_reused"


# --- tenant isolation -------------------------------------------------------------------------

actions = st.lists(
    st.tuples(st.sampled_from(TENANTS), st.sampled_from(["dataset", "job", "model"])),
    min_size=1,
    max_size=6,
)


def _create(env: Env, tenant: str, kind: str) -> list[str]:
    """Create one object of `kind` for `tenant`; the ids of everything that made."""
    client = env.clients[tenant]
    if kind == "dataset":
        resp = client.post(
            "/v1/datasets", data={"task": "classification"}, files={"file": ("a", CSV)}
        )
    elif kind == "job":
        resp = client.post("/v1/jobs", json=spec(env.datasets[tenant]))
    else:  # a model, registered as the worker would, for a job of this tenant
        (job_id,) = _create(env, tenant, "job")
        model_id = new_id("mdl")
        with session_scope(env.app.state.sessionmaker) as session:
            session.add(
                Model(
                    id=model_id,
                    tenant_id=tenant,
                    task="classification",
                    base_model=BASE,
                    method="full",
                    label_names=["neg", "pos"],
                    job_id=job_id,
                    train_dataset_id=env.datasets[tenant],
                    storage_path="models/none",
                )
            )
        return [job_id, model_id]
    assert resp.status_code == 201, resp.text
    return [resp.json()["id"]]


def _listed(client: TestClient, path: str) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"after": cursor} if cursor else {})
        page = client.get(path, params=params).json()
        ids |= {item["id"] for item in page["data"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


@settings(max_examples=int(25 * SCALE), deadline=None)
@given(steps=actions)
def test_tenants_never_see_each_others_objects(env: Env, steps: list[tuple[str, str]]) -> None:
    for tenant, kind in steps:
        env.owned[tenant].update(_create(env, tenant, kind))
    for tenant, client in env.clients.items():
        listed: set[str] = set()
        for path in ("/v1/datasets", "/v1/jobs", "/v1/models"):
            listed |= _listed(client, path)
        others = set().union(*(ids for t, ids in env.owned.items() if t != tenant))
        assert not listed & others, f"{tenant} sees {sorted(listed & others)}"
        assert env.owned[tenant] <= listed, f"{tenant} misses {env.owned[tenant] - listed}"
