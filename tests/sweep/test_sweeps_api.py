"""Sweeps through the real API: validation, trials as jobs, the best trial, pruning, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.sweep.conftest import TINY_MODEL_ID, advance, drive


def _error(resp: Any) -> tuple[int, str | None, str]:
    body = resp.json()["error"]
    return resp.status_code, (body.get("details") or {}).get("field"), body["message"]


HP = "hyperparameters"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({HP: {"learning_rate": {"loguniform": [0, 1e-3]}}}, f"{HP}.learning_rate", "than 0"),
        ({HP: {"warmup_ratio": {"uniform": [0.3, 0.1]}}}, f"{HP}.warmup_ratio", "less than"),
        ({HP: {"batch_size": {"choice": []}}}, f"{HP}.batch_size", "non-empty"),
        ({HP: {"batch_size": {"int": [4.5, 8]}}}, f"{HP}.batch_size", "two integers"),
        ({HP: {"batch_size": {"int": [8, 2048]}}}, f"{HP}.batch_size", "upper bound 2048"),
        ({HP: {"batch_size": {"uniform": [8, 64]}}}, f"{HP}.batch_size", "whole number"),
        ({HP: {"epochs": {"uniform": [1, 2], "log": True}}}, f"{HP}.epochs", "one key"),
        ({HP: {"epochs": {"normal": [1, 2]}}}, f"{HP}.epochs", "expected a number"),
        ({HP: None}, HP, "at least one search space"),
        ({HP: {"lr_scheduler": {"choice": ["linear", "cubic"]}}}, f"{HP}.lr_scheduler", "cubic"),
        ({"task_options": {"x": {"choice": [1, 2]}}}, "task_options.x", "only for values"),
        ({"method": {"type": {"choice": ["full", "lora"]}}}, "method.type", "one method"),
        ({"method": {"type": "lora", "r": {"int": [0, 8]}}}, "method.r", "lower bound 0"),
        ({"metric": "bleu"}, "metric", "does not report 'bleu'"),
        ({"alias": "mdl_x"}, "alias", "reserved"),
    ],
)
def test_bad_search_spaces_are_refused_naming_the_field(  # type: ignore[no-untyped-def]
    client: TestClient, sweep_spec: Callable[..., dict[str, Any]], change, field, words
) -> None:
    body = sweep_spec()
    for key, value in change.items():
        if key != HP:
            body[key] = value
        elif value is None:
            body[HP] = {"epochs": 2}
        else:
            body[HP] = {**body[HP], **value}
    status, named, message = _error(client.post("/v1/sweeps", json=body))
    assert (status, named) == (422, field), message
    assert words in message, message
    assert client.get("/v1/sweeps").json()["data"] == []
    assert client.get("/v1/jobs").json()["data"] == []


def test_a_sample_the_job_service_refuses_creates_nothing(  # type: ignore[no-untyped-def]
    client: TestClient, sweep_spec: Callable[..., dict[str, Any]], train_settings
) -> None:
    from app.sweep.study import storage

    # tiny-bert has 2 layers: every value of this space is refused by the job service itself.
    body = sweep_spec(method={"type": "full", "train_top_layers": {"int": [10, 50]}})
    status, named, message = _error(client.post("/v1/sweeps", json=body))
    assert (status, named) == (422, "method.train_top_layers"), message
    assert "layers of 'local/tiny-bert'" in message
    assert client.get("/v1/sweeps").json()["data"] == []
    assert client.get("/v1/jobs").json()["data"] == []
    assert storage(train_settings).get_all_studies() == []  # its study was removed


def test_trials_are_jobs_and_the_best_trial_is_marked(  # type: ignore[no-untyped-def]
    client: TestClient, queue, train_settings, sweep_spec: Callable[..., dict[str, Any]]
) -> None:
    import optuna

    from app.sweep.study import storage

    body = sweep_spec(max_trials=3, parallel=2, pruning=None, alias="sweep-best")
    created = client.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep = created.json()
    assert sweep["status"] == "running" and sweep["metric"] == "accuracy"
    assert sweep["direction"] == "maximize"
    assert [t["number"] for t in sweep["trials"]] == [0, 1]  # parallel: 2 at once
    trial_jobs = client.get("/v1/jobs", params={"sweep_id": sweep["id"]}).json()["data"]
    assert {j["id"] for j in trial_jobs} == {t["job_id"] for t in sweep["trials"]}
    assert set(queue.enqueued) == {t["job_id"] for t in sweep["trials"]}
    for trial in sweep["trials"]:
        job = client.get(f"/v1/jobs/{trial['job_id']}").json()
        assert job["sweep_id"] == sweep["id"] and job["base_model"] == TINY_MODEL_ID
        hp = job["hyperparameters"]
        assert (hp["learning_rate"], hp["batch_size"]) == (
            trial["params"]["learning_rate"],
            trial["params"]["batch_size"],
        )
        assert 1e-3 <= hp["learning_rate"] <= 3e-2 and hp["batch_size"] in (8, 16)
        assert hp["epochs"] == 2

    done = drive(client, train_settings, queue, sweep["id"])
    assert (done["status"], done["stop_reason"]) == ("succeeded", "max_trials")
    trials = done["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert {t["state"] for t in trials} == {"succeeded"}
    assert done["trial_counts"]["succeeded"] == 3
    for trial in trials:
        assert trial["value"] == trial["metrics"]["accuracy"]
        assert trial["model_id"] and trial["duration_s"] > 0
    best = max(trials, key=lambda t: (t["value"], -t["number"]))
    assert done["best"]["number"] == best["number"]
    assert done["best_model_id"] == best["model_id"]
    # The study agrees: every trial told with its job's value.
    study_id = storage(train_settings).get_study_id_from_name(sweep["id"])
    told = storage(train_settings).get_all_trials(study_id)
    assert [(t.state, t.value) for t in told] == [
        (optuna.trial.TrialState.COMPLETE, t["value"]) for t in trials
    ]
    # Marked: an event on the best trial's job, and the alias (unless below the baseline).
    events = client.get(f"/v1/jobs/{best['job_id']}/events", params={"limit": 1000}).json()
    assert any(f"best trial ({best['number']}) of sweep" in e["message"] for e in events["data"])
    alias = client.get("/v1/aliases/sweep-best")
    model = client.get(f"/v1/models/{best['model_id']}").json()
    if model["quality"] == "no_better_than_baseline":
        assert alias.status_code == 404
        assert "was not moved" in done["notes"][0]
    else:
        assert alias.json()["model"] == best["model_id"]
        assert done["notes"] == [
            f"alias 'sweep-best' now points at the best model {best['model_id']}"
        ]
    listed = client.get("/v1/sweeps").json()["data"]
    assert [s["id"] for s in listed] == [sweep["id"]]


def test_a_trial_below_the_median_is_pruned(  # type: ignore[no-untyped-def]
    client: TestClient, queue, train_settings, sweep_spec: Callable[..., dict[str, Any]]
) -> None:
    import optuna

    from app.db.models import Sweep
    from app.db.session import make_engine, make_sessionmaker
    from app.sweep import study as studies
    from worker.jobs import run_job

    body = sweep_spec(max_trials=4, parallel=1, pruning={"startup_trials": 1})
    body[HP]["epochs"] = 3
    sweep = client.post("/v1/sweeps", json=body).json()
    first = sweep["trials"][0]
    # Three completed trials whose every evaluation beats what any model can score: the next
    # evaluation of a real trial is below their median, so it is pruned at its first.
    engine = make_engine(train_settings)
    with make_sessionmaker(engine)() as session:
        row = session.get(Sweep, sweep["id"])
        assert row is not None
        study = studies.load_study(train_settings, row)
    engine.dispose()
    distributions = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True),
        "batch_size": optuna.distributions.CategoricalDistribution([8, 16]),
    }
    for _ in range(3):
        study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": 1e-2, "batch_size": 8},
                distributions=distributions,
                value=2.0,
                intermediate_values={step: 2.0 for step in range(1, 4)},
            )
        )

    assert run_job(train_settings, first["job_id"]).value == "pruned"
    job = client.get(f"/v1/jobs/{first['job_id']}").json()
    assert job["status"] == "pruned" and job["model_id"] is None
    assert job["progress"]["epoch"] <= 1.0  # stopped at its first evaluation, of three
    events = client.get(f"/v1/jobs/{first['job_id']}/events", params={"limit": 1000}).json()
    last = events["data"][-1]
    assert last["type"] == "status" and last["data"]["status"] == "pruned"
    assert "pruned" in last["message"] and "the median 2.0000" in last["message"]
    evals = [e["data"] for e in events["data"] if (e["data"] or {}).get("kind") == "eval"]
    assert len(evals) == 1 and job["metrics"]["accuracy"] == evals[0]["accuracy"]

    advance(train_settings, queue)
    done = client.get(f"/v1/sweeps/{sweep['id']}").json()
    # Trial 0 pruned, 1-3 the injected ones: max_trials reached, and no trial succeeded.
    assert [(t["number"], t["state"]) for t in done["trials"]] == [(0, "pruned")]
    assert done["trials"][0]["value"] == job["metrics"]["accuracy"]
    assert (done["status"], done["stop_reason"], done["best"]) == ("failed", "max_trials", None)
    told = study.trials[0]
    assert told.state == optuna.trial.TrialState.PRUNED
    assert told.intermediate_values == {1: job["metrics"]["accuracy"]}


def test_cancel_stops_queued_and_running_trials(  # type: ignore[no-untyped-def]
    client: TestClient, queue, train_settings, sweep_spec: Callable[..., dict[str, Any]]
) -> None:
    from app.db.models import JobStatus
    from app.db.session import make_engine, make_sessionmaker
    from worker.training.state import AttemptFence, claim_job

    sweep = client.post("/v1/sweeps", json=sweep_spec(max_trials=6, parallel=2)).json()
    running, queued = (t["job_id"] for t in sweep["trials"])
    engine = make_engine(train_settings)
    factory = make_sessionmaker(engine)
    with factory() as session:
        attempt = claim_job(session, job_id=running, worker="test")
        session.commit()
    assert attempt == 1

    cancelling = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert cancelling.status_code == 200, cancelling.text
    assert cancelling.json()["status"] == "cancelling"  # its running trial has not stopped yet
    assert client.get(f"/v1/jobs/{queued}").json()["status"] == "cancelled"
    events = client.get(f"/v1/jobs/{running}/events").json()["data"]
    assert events[-1]["message"].startswith("cancellation requested")
    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 200  # still ending

    # The running trial's worker sees the request and ends it; the driver then ends the sweep.
    AttemptFence(factory, job_id=running, attempt=1).finish(JobStatus.CANCELLED, "job cancelled")
    engine.dispose()
    advance(train_settings, queue)
    done = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert (done["status"], done["stop_reason"]) == ("cancelled", "cancelled")
    assert [t["state"] for t in done["trials"]] == ["cancelled", "cancelled"]  # none asked since
    again = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert _error(again)[0] == 409 and "already cancelled" in _error(again)[2]
    assert client.post("/v1/sweeps/swp_nope/cancel").status_code == 404


def test_the_time_budget_ends_a_sweep(  # type: ignore[no-untyped-def]
    client: TestClient, queue, train_settings, sweep_spec: Callable[..., dict[str, Any]]
) -> None:
    from datetime import timedelta

    from app.db.models import utcnow

    sweep = client.post("/v1/sweeps", json=sweep_spec(max_trials=6, time_budget_s=600)).json()
    assert advance(train_settings, queue) == []  # nothing to do before the budget is spent
    advance(train_settings, queue, now=utcnow() + timedelta(seconds=601))
    done = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert (done["status"], done["stop_reason"]) == ("failed", "time_budget")
    assert [t["job_status"] for t in done["trials"]] == ["cancelled", "cancelled"]
