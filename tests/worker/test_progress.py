"""A running job's progress: percent done, elapsed seconds, ETA and samples/s, across a resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import EventType, Job, JobEvent, JobStatus
from app.job.checkpoints import checkpoints_dir, latest_complete
from app.job.schemas import JobProgress
from worker.jobs import run_job
from worker.training.progress import ProgressTimer, earlier_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percent_elapsed_eta_and_throughput_follow_the_clock() -> None:
    clock = FakeClock()
    timer = ProgressTimer(clock=clock)
    timer.start(0, samples_per_step=16)
    # Nothing trained yet: no pace to estimate from.
    assert timer.snapshot(0, 10) == {
        "percent": 0.0,
        "elapsed_s": 0.0,
        "eta_s": None,
        "samples_per_second": None,
    }
    clock.now += 4.0
    # 2 steps in 4 s: 8 steps left take 16 s; 2 x 16 samples in 4 s.
    assert timer.snapshot(2, 10) == {
        "percent": 20.0,
        "elapsed_s": 4.0,
        "eta_s": 16.0,
        "samples_per_second": 8.0,
    }
    clock.now += 6.0
    assert timer.snapshot(5, 10)["eta_s"] == 10.0


@pytest.mark.parametrize(
    ("step", "total", "percent"),
    [(1, 3, 33.3), (2, 3, 66.6), (9999, 10000, 99.9), (10000, 10000, 100.0), (0, 0, 0.0)],
)
def test_percent_has_one_decimal_and_reaches_100_only_at_the_end(
    step: int, total: int, percent: float
) -> None:
    timer = ProgressTimer(clock=FakeClock())
    timer.start(0, samples_per_step=8)
    assert timer.snapshot(step, total)["percent"] == percent


def test_finished_training_is_100_percent_and_its_clock_stops() -> None:
    clock = FakeClock()
    timer = ProgressTimer(clock=clock)
    timer.start(0, samples_per_step=8)
    clock.now += 3.0
    timer.finish()  # early stopping: step 6 of 10
    clock.now += 50.0  # registering the model is not training
    assert timer.snapshot(6, 10) == {
        "percent": 100.0,
        "elapsed_s": 3.0,
        "eta_s": 0.0,
        "samples_per_second": 16.0,
    }


def test_a_resumed_attempt_counts_earlier_time_and_paces_on_its_own_steps() -> None:
    clock = FakeClock()
    timer = ProgressTimer(clock=clock)
    # Resumed from the checkpoint at step 6 of 15, which 30 s of training produced.
    timer.start(6, samples_per_step=8, earlier_s=30.0)
    # The 6 skipped steps took this attempt no time: they give no pace (not 6 steps in 0 s).
    assert timer.snapshot(6, 15) == {
        "percent": 40.0,
        "elapsed_s": 30.0,
        "eta_s": None,
        "samples_per_second": None,
    }
    clock.now += 2.0
    # 2 steps in 2 s: 7 left take 7 s (not 8 steps in 2 s, nor 8 in 32 s).
    assert timer.snapshot(8, 15) == {
        "percent": 53.3,
        "elapsed_s": 32.0,
        "eta_s": 7.0,
        "samples_per_second": 8.0,
    }


@pytest.mark.parametrize(
    ("manifest", "seconds"),
    [
        ({"elapsed_s": 12.5}, 12.5),
        ({}, 0.0),  # saved before the figure was recorded
        ({"elapsed_s": None}, 0.0),
        ({"elapsed_s": -4.0}, 0.0),
        ({"elapsed_s": math.nan}, 0.0),
        ({"elapsed_s": "12"}, 0.0),
    ],
)
def test_earlier_seconds_come_from_the_checkpoint_manifest(
    manifest: dict[str, Any], seconds: float
) -> None:
    assert earlier_seconds(manifest) == seconds


def test_a_job_row_without_timings_reads_as_not_started() -> None:
    job = Job(progress_step=0, progress_total=0, epoch=0.23076923076923078, progress_detail=None)
    assert JobProgress.from_row(job).model_dump() == {
        "step": 0,
        "total": 0,
        "epoch": 0.23,
        "percent": 0.0,
        "elapsed_s": None,
        "eta_s": None,
        "samples_per_second": None,
    }


def _timings_are_sane(progress: dict[str, Any]) -> None:
    assert progress["elapsed_s"] is not None and progress["elapsed_s"] >= 0
    assert progress["eta_s"] is None or progress["eta_s"] >= 0
    assert progress["samples_per_second"] is None or progress["samples_per_second"] > 0
    assert round(progress["epoch"], 2) == progress["epoch"]


def test_a_training_job_shows_its_progress_while_running_and_across_a_resume(
    train_settings, db: Session, add_job: Callable[..., str], client: TestClient
) -> None:
    from worker.training.callbacks import JobProgressCallback

    train_settings.cancel_poll_seconds = 0.0  # the row follows every step
    # 36 train rows (4 held out) in batches of 8: 5 steps an epoch, 15 in all.
    job_id = add_job(epochs=3, batch_size=8, checkpoint_every=2, dropout=0.0)

    def progress() -> dict[str, Any]:
        answer = client.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200
        body: dict[str, Any] = answer.json()["progress"]
        return body

    at_begin: list[dict[str, Any]] = []
    at_step: list[dict[str, Any]] = []
    begin, step_end = JobProgressCallback.on_train_begin, JobProgressCallback.on_step_end

    def watch_begin(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        begin(self, args, state, control, **kw)
        at_begin.append(progress())

    def watch_step(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        step_end(self, args, state, control, **kw)
        at_step.append(progress())
        if state.global_step == 7 and len(at_begin) == 1:
            raise KeyboardInterrupt("the worker is stopping")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JobProgressCallback, "on_train_begin", watch_begin)
        patch.setattr(JobProgressCallback, "on_step_end", watch_step)
        with pytest.raises(KeyboardInterrupt):
            run_job(train_settings, job_id)
        latest = latest_complete(checkpoints_dir(train_settings, job_id))
        assert latest is not None and latest[1]["step"] == 6
        checkpoint_elapsed = latest[1]["elapsed_s"]
        assert checkpoint_elapsed > 0
        first_attempt = len(at_step)
        assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED

    # When an attempt starts training there is no pace yet; the resumed one starts at step 6
    # with the training time behind its checkpoint.
    assert [(p["step"], p["percent"], p["eta_s"]) for p in at_begin] == [
        (0, 0.0, None),
        (6, 40.0, None),
    ]
    assert at_begin[0]["elapsed_s"] == 0.0 and at_begin[1]["elapsed_s"] == checkpoint_elapsed
    assert at_begin[1]["samples_per_second"] is None

    steps = [p["step"] for p in at_step]
    assert steps == [*range(1, 8), *range(7, 16)]
    for seen in at_step:
        _timings_are_sane(seen)
        assert seen["total"] == 15
        assert seen["percent"] == math.floor(1000 * seen["step"] / 15) / 10
        assert seen["epoch"] == pytest.approx(seen["step"] / 5, abs=0.01)
        assert seen["eta_s"] is not None and seen["samples_per_second"] is not None
    assert at_step[first_attempt - 1]["percent"] == 46.6
    elapsed = [p["elapsed_s"] for p in at_step]
    assert elapsed[:first_attempt] == sorted(elapsed[:first_attempt])
    # The resumed attempt carries on from its checkpoint's time, never from zero.
    assert elapsed[first_attempt:] == sorted(elapsed[first_attempt:])
    assert elapsed[first_attempt] >= checkpoint_elapsed

    final = progress()
    assert (final["step"], final["total"], final["epoch"]) == (15, 15, 3.0)
    assert (final["percent"], final["eta_s"]) == (100.0, 0.0)
    _timings_are_sane(final)
    assert final["elapsed_s"] >= elapsed[-1]

    # The training metric events carry the same figures.
    db.expire_all()
    events = db.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == EventType.METRICS)
    ).all()
    train = [e.data for e in events if e.data and e.data["kind"] == "train"]
    assert train and {p["step"] for p in train} == set(range(1, 16))
    for data in train:
        _timings_are_sane(data)
        assert data["percent"] == math.floor(1000 * data["step"] / data["total"]) / 10
        assert data["eta_s"] is not None and data["samples_per_second"] is not None
    assert all(e.data["epoch"] == round(e.data["epoch"], 2) for e in events if e.data)


class RecordingFence:
    """An AttemptFence stand-in that records each write; `down` makes metric writes fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.down = False

    def metrics_batch(self, events: list[tuple[str, dict[str, Any]]], **values: Any) -> bool:
        if self.down:
            return False
        self.batches.append([data["step"] for _, data in events])
        return True

    def progress(self, **values: Any) -> bool:
        return False


def test_every_step_is_kept_and_written_in_batches_that_survive_an_outage() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from worker.training.callbacks import JobProgressCallback

    clock = FakeClock()
    fence = RecordingFence()
    callback = JobProgressCallback(fence, poll_seconds=1.0, primary_metric="accuracy", clock=clock)  # type: ignore[arg-type]
    args = TrainingArguments(
        output_dir="unused", per_device_train_batch_size=4, use_cpu=True, report_to="none"
    )
    state, control = TrainerState(max_steps=20), TrainerControl()
    callback.on_train_begin(args, state, control)

    def step(n: int) -> None:
        clock.now += 0.25
        state.global_step = n
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": 1.0 / n, "learning_rate": 1e-3})

    for n in range(1, 9):
        step(n)
    # The first step at once, then one write a second (4 steps of 0.25 s), at the step's end,
    # before that step's loss is logged.
    assert fence.batches == [[1], [2, 3], [4, 5, 6, 7]]
    fence.down = True
    for n in range(9, 13):
        step(n)
    assert len(callback.pending) == 5  # steps 8-12 wait for the database
    fence.down = False
    callback.on_save(args, state, control)  # a checkpoint: everything before it is written
    assert fence.batches[-1] == [8, 9, 10, 11, 12]
    for n in range(13, 21):
        step(n)
    callback.on_train_end(args, state, control)
    written = [s for batch in fence.batches for s in batch]
    assert written == list(range(1, 21)) and callback.pending == []
