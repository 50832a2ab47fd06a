"""Fine-tune one claimed job with the Hugging Face Trainer and write its model directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.basemodel.schemas import ResolvedBaseModel
from app.core.config import Settings
from app.core.store import get_store
from app.db.models import Dataset, Job, Model
from app.job.checkpoints import checkpoints_dir, fetch_newest, latest_complete
from app.job.schemas import JobSpec
from app.ml import device as devices
from app.ml.lineage import base_metadata
from app.ml.loading import quiet_transformers
from app.ml.methods import get_method
from app.ml.pooling import POOLING_KEY
from app.ml.tasks import TaskSpec, get_task
from app.registry.lineage import continued_labels, resolve_job_base
from worker.training import baseline as baselines
from worker.training import data as training_data
from worker.training import stopping
from worker.training.artifacts import WrittenModel, library_versions, write_model_dir
from worker.training.checkpoints import CheckpointCallback
from worker.training.plan import TrainingPlan, build_plan, torch_threads
from worker.training.pruning import sweep_pruning
from worker.training.state import AttemptFence
from worker.training.world import SINGLE, World

if TYPE_CHECKING:
    import datasets
    from transformers import Trainer

    from worker.training.callbacks import JobProgressCallback

log = logging.getLogger("tuneserve.worker")


@dataclass
class JobInputs:
    job: Job
    spec: JobSpec
    task: TaskSpec
    base: ResolvedBaseModel
    train_row: Dataset
    validation_row: Dataset | None


@dataclass
class PreparedData:
    train: datasets.Dataset
    validation: datasets.Dataset
    split_kind: str
    label_names: list[str]


def read_job_inputs(settings: Settings, fence: AttemptFence) -> JobInputs:
    from app.db.session import session_scope

    job = fence.job()
    with session_scope(fence.factory) as session:
        train_row = session.get(Dataset, job.train_dataset_id)
        val_row = (
            session.get(Dataset, job.validation_dataset_id) if job.validation_dataset_id else None
        )
        base = resolve_job_base(
            session,
            settings=settings,
            tenant=job.tenant_id,
            task=job.task,
            base_model=job.base_model,
        )
    if train_row is None:
        raise RuntimeError(f"train dataset {job.train_dataset_id} no longer exists")
    task = get_task(job.task)
    return JobInputs(job, JobSpec.model_validate(job.spec), task, base, train_row, val_row)


def _prepare_rows(settings: Settings, inputs: JobInputs, fence: AttemptFence) -> PreparedData:
    hp = inputs.spec.hyperparameters
    train = training_data.load_rows(settings, inputs.train_row)
    if inputs.validation_row is not None:
        validation = training_data.load_rows(settings, inputs.validation_row)
        split = training_data.Split(train, validation, "given")
    else:
        split = training_data.hold_out(
            train,
            fraction=hp.validation_split,
            seed=inputs.spec.seed,
            stratify_column=inputs.task.stratify_column(),
        )
    # Labels come from the whole train set: a rare class the split sent to validation still counts.
    train_labels = inputs.task.label_names(
        train, split.validation if split.kind == "given" else None
    )
    labels = continued_labels(inputs.base, train_labels)  # a continued model keeps its parent's
    source = "validation dataset" if split.kind == "given" else f"{split.kind} split of train set"
    fence.log(
        f"datasets: {split.train.num_rows} train rows, {split.validation.num_rows} validation rows"
        f" ({source})",
        train_rows=split.train.num_rows,
        validation_rows=split.validation.num_rows,
        validation=split.kind,
    )
    shown = labels if len(labels) <= 50 else [*labels[:50], "..."]
    fence.log(f"{len(labels)} labels: {shown}", num_labels=len(labels), label_names=labels[:1000])
    _warn_absent_labels(inputs, split, fence, train_labels=train_labels)
    return PreparedData(split.train, split.validation, split.kind, labels)


def _warn_absent_labels(
    inputs: JobInputs,
    split: training_data.Split,
    fence: AttemptFence,
    *,
    train_labels: list[str],
) -> None:
    """A warning event naming the train set's classes the validation rows have none of (a held-out
    split can lack a rare class as much as a named validation set can)."""
    if not train_labels:
        return  # a task without labels (QA)
    absent = inputs.task.absent_labels(train_labels, inputs.task.summarize(split.validation))
    if absent is None:
        return
    if inputs.validation_row is not None:
        source = f"validation dataset {inputs.validation_row.id}"
    else:
        source = f"the validation split held out of train dataset {inputs.train_row.id}"
    fence.warning(absent.message(source), absent_labels=absent.labels, validation=split.kind)


def _final_metrics(trainer: Trainer, callback: JobProgressCallback) -> dict[str, Any]:
    """The best checkpoint's evaluation when it was restored; else the evaluation after the last
    step, reused from the epoch-end one when it is the same."""
    best = stopping.restored_best(trainer)
    if best is not None:
        return best[1]
    if callback.last_eval is not None and callback.last_eval[0] == trainer.state.global_step:
        return callback.last_eval[1]
    trainer.evaluate()
    assert callback.last_eval is not None
    return callback.last_eval[1]


def _metadata(
    inputs: JobInputs,
    prepared: PreparedData,
    *,
    model_id: str,
    metrics: dict[str, Any],
    judgement: baselines.Judgement,
    plan: TrainingPlan,
    training: dict[str, Any],
) -> dict[str, Any]:
    val_row = inputs.validation_row
    return {
        "model_id": model_id,
        "job_id": inputs.job.id,
        "task": inputs.task.name,
        "label_names": prepared.label_names,
        "base_model": base_metadata(inputs.base),
        # The task head's weights, for a model continued from this one.
        "head_weights": plan.new_weights,
        # What the head reads (app/ml/pooling.py): "mean", "cls", or None where the config names
        # none (the architecture's own head). An adapter's download card reads it.
        "pooling": getattr(plan.starting.model.config, POOLING_KEY, None),
        "method": {**inputs.spec.method.model_dump(mode="json"), **plan.method_applied},
        "hyperparameters": plan.recorded,
        "task_options": inputs.spec.task_options,
        "max_length": plan.hyperparameters.max_length,
        "seed": inputs.spec.seed,
        "metrics": metrics,
        "baseline_metrics": judgement.baseline_metrics,
        "quality": judgement.quality,
        "primary_metric": inputs.task.primary_metric,
        "train_dataset": {
            "id": inputs.train_row.id,
            "sha256": inputs.train_row.sha256,
            "rows_used": prepared.train.num_rows,
        },
        "validation_dataset": {
            "id": val_row.id if val_row else None,
            "sha256": val_row.sha256 if val_row else None,
            "rows_used": prepared.validation.num_rows,
            "kind": prepared.split_kind,
        },
        "parameters": plan.parameters,
        "training": training,
        # The method's own record (distill: the teacher, the student, their losses and metrics).
        **plan.starting.metadata,
        "versions": library_versions(),
    }


def train_job(
    settings: Settings, fence: AttemptFence, *, model_id: str
) -> tuple[Model, WrittenModel]:
    """Train the claimed job in this process and write models/<model_id>; returns the Model row,
    not inserted."""
    trained = train_rank(settings, fence, model_id=model_id, world=SINGLE)
    assert trained is not None
    return trained


def train_rank(
    settings: Settings, fence: AttemptFence, *, model_id: str, world: World
) -> tuple[Model, WrittenModel] | None:
    """This process's part in training the job: every rank trains on its shard; rank 0 alone
    writes the model and returns its row (the others None)."""
    quiet_transformers()
    devices.set_torch_threads(torch_threads(settings, world))
    inputs = read_job_inputs(settings, fence)
    fence.raise_if_cancelled()
    prepared = _prepare_rows(settings, inputs, fence)
    baseline = baselines.task_baseline(
        fence,
        inputs.task,
        prepared.train,
        prepared.validation,
        label_names=prepared.label_names,
        options=inputs.task.options_model.model_validate(inputs.spec.task_options),
    )
    # Shared by the job's attempts: a later attempt resumes from what an earlier one saved.
    store = get_store(settings)
    saved = checkpoints_dir(settings, inputs.job.id)
    plan = build_plan(settings, inputs, prepared, fence, output_dir=saved, world=world)
    trainer, callback = plan.trainer, plan.progress
    trainer.add_callback(
        CheckpointCallback(fence, elapsed=callback.timer.elapsed, store=store, job_id=inputs.job.id)
    )
    pruning = sweep_pruning(settings, fence, inputs.job, world)  # a sweep trial's evaluations
    if pruning is not None:
        trainer.add_callback(pruning)
    if world.is_main:  # the ranks share this machine's disk
        fetch_newest(store, inputs.job.id, saved)
    world.barrier()
    resume = latest_complete(saved)
    if resume is not None:
        path, manifest = resume
        callback.resuming(manifest)
        fence.log(
            f"resuming from {path.name} (step {manifest['step']}, "
            f"epoch {manifest['epoch']:.2f}) saved by an earlier attempt",
            resumed_from_step=manifest["step"],
        )
    result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    metrics = _final_metrics(trainer, callback)  # every rank evaluates its share
    # A model read beside the trained one (distill: the teacher), on the same rows.
    parent_metrics = plan.method.parent_metrics(trainer, plan.starting, fence)
    if not world.is_main:
        return None
    fence.raise_if_cancelled()
    hp = plan.hyperparameters
    stopped = stopping.report(trainer, hp, fence)
    samples = (
        prepared.train.num_rows * float(trainer.state.epoch or hp.epochs)
        if hp.max_steps is None
        else trainer.state.global_step * hp.batch_size * hp.gradient_accumulation_steps
    )
    training = {
        **stopped,
        "train_loss": result.training_loss,
        "global_steps": trainer.state.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "step_seconds": round(callback.step_seconds, 3),
        "train_samples_per_second": round(samples / max(callback.step_seconds, 1e-9), 2),
    }
    fence.log(
        f"training done: {training['global_steps']} steps, "
        f"{training['train_samples_per_second']} samples/s in training steps",
        **training,
    )
    judgement = baselines.judge(
        fence,
        inputs.task,
        metrics=metrics,
        baseline=baseline,
        rows=prepared.validation.num_rows,
        losses=baselines.train_losses(trainer.state.log_history),
    )
    artifact = get_method(inputs.spec.method.type).artifact(inputs.spec.method)
    meta = _metadata(
        inputs,
        prepared,
        model_id=model_id,
        metrics=metrics,
        judgement=judgement,
        plan=plan,
        training=training,
    )

    def save(directory: Path) -> None:
        plan.method.save(trainer.model, trainer.processing_class, directory, artifact=artifact)

    written = write_model_dir(
        settings, model_id=model_id, save=save, meta=meta | {"artifact": artifact}
    )
    row = Model(
        id=model_id,
        tenant_id=inputs.job.tenant_id,
        task=inputs.task.name,
        base_model=inputs.base.id,
        method=inputs.spec.method.type,
        label_names=prepared.label_names,
        metrics=metrics,
        parent_metrics=parent_metrics,
        baseline_metrics=judgement.baseline_metrics,
        quality=judgement.quality,
        job_id=inputs.job.id,
        train_dataset_id=inputs.train_row.id,
        validation_dataset_id=inputs.validation_row.id if inputs.validation_row else None,
        hyperparameters=plan.recorded,
        storage_path=written.storage_path,
        size_bytes=written.size_bytes,
        artifact=artifact,
        parent_model_id=inputs.base.parent_model_id,
        parameters=plan.parameters,
    )
    return row, written
