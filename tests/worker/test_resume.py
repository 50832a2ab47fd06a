"""A job whose attempt dies mid-training resumes from its last complete checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, JobStatus, Model
from app.job.checkpoints import MANIFEST, checkpoints_dir, latest_complete
from worker.jobs import run_job

SPEC: dict[str, Any] = {"epochs": 3, "batch_size": 8, "checkpoint_every": 2, "dropout": 0.0}


def _job(db: Session, job_id: str) -> Job:
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None
    return job


def test_interrupted_attempt_resumes_from_its_last_complete_checkpoint(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
) -> None:
    from worker.training.callbacks import JobProgressCallback

    train = add_dataset()
    # The same job run straight through, for comparison.
    straight = add_job(train=train, **SPEC)
    assert run_job(train_settings, straight) == JobStatus.SUCCEEDED

    job_id = add_job(train=train, **SPEC)
    original = JobProgressCallback.on_step_end

    def dies_at_step_7(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        original(self, args, state, control, **kw)
        if state.global_step == 7:
            raise KeyboardInterrupt("the worker is stopping")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(JobProgressCallback, "on_step_end", dies_at_step_7)
        run_job(train_settings, job_id)

    job = _job(db, job_id)
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 1)
    saved = checkpoints_dir(train_settings, job_id)
    latest = latest_complete(saved)
    assert latest is not None and latest[1]["step"] == 6
    assert sorted(p.name for p in saved.iterdir()) == ["checkpoint-4", "checkpoint-6"]  # kept 2
    # A torn write (files, no manifest) is never taken for a checkpoint.
    torn = saved / "checkpoint-8"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    job = _job(db, job_id)
    assert (job.attempt, job.progress_step, job.progress_total) == (2, job.progress_total, 15)
    messages = list(
        db.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )
    assert any("resuming from checkpoint-6 (step 6" in m for m in messages)
    assert any("re-queued after attempt 1" in m for m in messages)
    assert db.scalar(select(func.count()).select_from(Model).where(Model.job_id == job_id)) == 1
    assert not (train_settings.jobs_dir / job_id).exists()  # checkpoints go when the job ends

    # Attempt 2 trained steps 7-15 only, and the scheduler went on where it was: the learning
    # rate at each step is the one the straight run had at that step.
    def train_logs(job: str, after_event: int = 0) -> dict[int, float]:
        rows = db.scalars(
            select(JobEvent).where(JobEvent.job_id == job, JobEvent.id > after_event)
        ).all()
        return {
            e.data["step"]: e.data["learning_rate"]
            for e in rows
            if e.data and e.data.get("kind") == "train"
        }

    resumed_at = db.scalar(
        select(JobEvent.id).where(
            JobEvent.job_id == job_id, JobEvent.message.like("resuming from%")
        )
    )
    resumed = train_logs(job_id, after_event=resumed_at or 0)
    assert resumed and min(resumed) > 6
    straight_lr = train_logs(straight)
    for step, lr in resumed.items():
        assert lr == pytest.approx(straight_lr[step])


def test_manifest_lists_every_file_with_its_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.job.checkpoints import read_manifest, write_manifest

    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x" * 10)
    (ckpt / "optimizer.pt").write_bytes(b"y" * 5)
    assert read_manifest(ckpt) is None  # no manifest yet
    write_manifest(ckpt, step=3, epoch=1.0, metrics={"eval_loss": 0.5})
    manifest = read_manifest(ckpt)
    assert manifest is not None and manifest["files"] == {
        "model.safetensors": 10,
        "optimizer.pt": 5,
    }
    assert (ckpt / MANIFEST).exists()
    (ckpt / "optimizer.pt").write_bytes(b"y" * 4)  # changed after the manifest: not complete
    assert read_manifest(ckpt) is None


def test_early_stopping_resumes_with_its_patience_and_best_checkpoint(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
) -> None:
    from tests.tinymodel import sentiment_rows
    from tests.worker.test_controls import EARLY_STOPPING, flip_every
    from worker.training.callbacks import JobProgressCallback

    train, validation = add_dataset(), add_dataset(flip_every(sentiment_rows(12, seed=1), 3))
    straight = add_job(train=train, validation=validation, **EARLY_STOPPING)
    assert run_job(train_settings, straight) == JobStatus.SUCCEEDED
    expected = _job(db, straight)
    # The straight run stops at step 25: the best is step 15, then 20 and 25 are worse.
    assert expected.progress_step == 25

    job_id = add_job(train=train, validation=validation, **EARLY_STOPPING)
    original = JobProgressCallback.on_step_end

    def dies_at_step_22(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        original(self, args, state, control, **kw)
        if state.global_step == 22:
            raise KeyboardInterrupt("the worker is stopping")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(JobProgressCallback, "on_step_end", dies_at_step_22)
        run_job(train_settings, job_id)
    # checkpoints_kept=1, yet the best (15) is kept beside the newest (20).
    saved = checkpoints_dir(train_settings, job_id)
    assert sorted(p.name for p in saved.iterdir()) == ["checkpoint-15", "checkpoint-20"]

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    job = _job(db, job_id)
    # One more worse evaluation after the resume was enough (the patience count came back with
    # checkpoint-20), and the best checkpoint restored is the one the first attempt saved.
    assert (job.attempt, job.progress_step) == (2, 25)
    assert job.metrics == expected.metrics
    messages = list(
        db.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )
    assert any("resuming from checkpoint-20" in m for m in messages)
    assert any(m.startswith("restored checkpoint-15, the best by loss") for m in messages)


@pytest.mark.parametrize(
    "method",
    [
        # The Trainer's checkpoint adapter is cut to the ranks allocated so far: peft cannot load
        # it back into the training model (init_r), and the allocator's scores are not in it.
        {"type": "adalora", "init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 4},
        # The Trainer's checkpoint holds the projection's output, not the projection.
        {"type": "prefix_tuning", "num_virtual_tokens": 4, "prefix_projection": True},
    ],
    ids=["adalora", "prefix_projection"],
)
def test_peft_methods_resume_from_their_checkpoint_state(
    train_settings, db: Session, add_job: Callable[..., str], method: dict[str, Any]
) -> None:
    from safetensors.torch import load_file

    from worker.training import adapters
    from worker.training.callbacks import JobProgressCallback
    from worker.training.methods.adalora import allocating_tuner

    job_id = add_job(method=method, learning_rate=1e-2, **SPEC)
    original = JobProgressCallback.on_step_end

    def dies_at_step_9(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        original(self, args, state, control, **kw)
        if state.global_step == 9:
            raise KeyboardInterrupt("the worker is stopping")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(JobProgressCallback, "on_step_end", dies_at_step_9)
        run_job(train_settings, job_id)
    latest = latest_complete(checkpoints_dir(train_settings, job_id))
    assert latest is not None and latest[1]["step"] == 8
    # Listed in the manifest: written before the checkpoint was marked complete.
    assert adapters.CHECKPOINT_STATE in latest[1]["files"]
    saved = load_file(str(latest[0] / adapters.CHECKPOINT_STATE))

    loaded: list[dict[str, Any]] = []
    load = adapters.load_checkpoint_state

    def load_and_look(model: Any, directory: Any) -> bool:
        found = load(model, directory)
        state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        tuner = allocating_tuner(model)
        if tuner is not None:
            scores = tuner.rankallocator.exp_avg_ipt
            state |= {f"adalora.exp_avg_ipt.{n}": v.clone() for n, v in scores.items()}
            state["rank_pattern"] = tuner.peft_config["default"].rank_pattern
        loaded.append(state)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapters, "load_checkpoint_state", load_and_look)
        assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED, _job(
            db, job_id
        ).error_message

    # Attempt 2 started from every trainable tensor as attempt 1 had it at step 8, and AdaLoRA's
    # allocator from its importance scores and last rank pattern.
    (state,) = loaded
    pattern = state.pop("rank_pattern", None)
    assert set(state) == {
        k for k in saved if not k.startswith(("adalora.ipt", "adalora.exp_avg_unc"))
    }
    for name, tensor in state.items():
        assert tensor.equal(saved[name]), name
    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    path = train_settings.data_dir / model.storage_path
    if method["type"] == "adalora":
        assert any(k.startswith("adalora.exp_avg_ipt.") for k in state)
        assert pattern is not None and len(pattern) == 4
        ranks = [
            t.shape[0]
            for k, t in load_file(str(path / "adapter_model.safetensors")).items()
            if k.endswith("lora_E")
        ]
        assert sum(ranks) == 2 * len(ranks) == 8  # target_r per matrix, on average
