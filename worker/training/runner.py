"""Fine-tune one claimed job with the Hugging Face Trainer and write its model directory."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.basemodel.schemas import ResolvedBaseModel
from app.core.config import Settings
from app.core.store import get_store
from app.db.models import Dataset, Job, Model
from app.job.checkpoints import checkpoints_dir, fetch_newest, latest_complete
from app.job.distill import DistillMethod, defaults_method
from app.job.schemas import (
    FullMethod,
    HeadOnlyMethod,
    JobSpec,
    ResolvedHyperparameters,
)
from app.ml import device as devices
from app.ml.lineage import base_metadata, load_starting_model
from app.ml.loading import load_tokenizer, quiet_transformers
from app.ml.tasks import TaskSpec, get_task
from app.registry.lineage import continued_labels, resolve_job_base
from worker.training import adapters, auto, distill, stopping
from worker.training import baseline as baselines
from worker.training import data as training_data
from worker.training.artifacts import WrittenModel, library_versions, write_model_dir
from worker.training.checkpoints import CheckpointCallback
from worker.training.freezing import freeze, set_dropout
from worker.training.lora import count_parameters
from worker.training.pruning import sweep_pruning
from worker.training.shards import ShardReport
from worker.training.state import AttemptFence
from worker.training.world import SINGLE, World

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase, Trainer

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


# Tokens an example may have at most (Hyperparameters.max_length's bound).
MAX_LENGTH_LIMIT = 8192


def effective_max_length(
    requested: int, tokenizer: PreTrainedTokenizerBase, config: Any, *, reserved: int = 0
) -> int:
    """The requested length, capped by the tokenizer's and the position embeddings' limits
    (less the `reserved` positions a prefix takes)."""
    limits = [requested]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions - reserved)
    return min(limits)


def _training_args(
    hp: ResolvedHyperparameters,
    *,
    seed: int,
    output_dir: Path,
    steps: int,
    world: World = SINGLE,
) -> Any:
    from transformers import TrainingArguments

    device = devices.select_device()
    distributed: dict[str, Any] = {}
    if world.size > 1:
        distributed["ddp_backend"] = "nccl" if device.type == "cuda" else "gloo"
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        learning_rate=hp.learning_rate,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        max_grad_norm=hp.max_grad_norm,
        # A float below 1 is a ratio of the total steps.
        warmup_steps=hp.warmup_steps if hp.warmup_steps is not None else hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        lr_scheduler_type=hp.lr_scheduler,
        seed=seed,
        # Batches of similar lengths pad little: 1.9x the samples/s of random batches here.
        train_sampling_strategy="group_by_length",
        length_column_name=training_data.LENGTH_COLUMN,
        # The datasets hold model inputs plus the length column, which the collator drops.
        remove_unused_columns=False,
        **stopping.evaluation_args(hp),
        # Resumable checkpoints (weights, optimizer, scheduler, RNG) for a worker that dies.
        save_strategy="no"
        if hp.checkpoint_every == "no"
        else ("epoch" if hp.checkpoint_every == "epoch" else "steps"),
        save_steps=hp.checkpoint_every if isinstance(hp.checkpoint_every, int) else 500,
        save_total_limit=hp.checkpoints_kept,
        logging_strategy="steps",
        # Every step's loss, rate and throughput is kept as a metrics event (the callback writes
        # them in batches), so curves can be drawn after the fact.
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        use_cpu=device.type == "cpu",
        # resolve_precision has checked that the device has it.
        bf16=hp.mixed_precision == "bf16",
        fp16=hp.mixed_precision == "fp16",
        # The Trainer smooths only batches with a `labels` key; tasks without one refuse it.
        label_smoothing_factor=hp.label_smoothing,
        **distributed,
    )


def ordered_eval_trainer() -> type[Trainer]:
    """A Trainer that evaluates features in dataset order, whatever the train sampling, and
    whose checkpoints of peft models resume every method (see adapters.save_checkpoint_state)."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class OrderedEvalTrainer(Trainer):
        # transformers 5 also groups eval batches by length (a shuffled order) when training
        # does; compute_metrics maps predictions back to eval rows by position (QA, NER).
        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            return SequentialSampler(eval_dataset)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            # Before on_save, so the checkpoint's manifest lists the file.
            run_dir = Path(self._get_output_dir(trial=trial))
            if self.args.should_save:
                adapters.save_checkpoint_state(
                    self.model, run_dir / f"checkpoint-{self.state.global_step}"
                )
            # Every rank has written its part (each its own RNG state) before rank 0 lists the
            # checkpoint's files and publishes it.
            self.accelerator.wait_for_everyone()

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            if not adapters.load_checkpoint_state(self.model, Path(resume_from_checkpoint)):
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    return OrderedEvalTrainer


def _build_trainer(
    settings: Settings,
    inputs: JobInputs,
    prepared: PreparedData,
    fence: AttemptFence,
    *,
    output_dir: Path,
    world: World,
) -> tuple[Trainer, JobProgressCallback, dict[str, Any]]:
    from transformers import PrinterCallback, set_seed

    from worker.training.callbacks import JobProgressCallback

    task, spec = inputs.task, inputs.spec
    set_seed(spec.seed)  # before the head is initialised
    tokenizer = load_tokenizer(inputs.base.path_or_hub_id)
    teacher: distill.Teacher | None = None
    if isinstance(spec.method, DistillMethod):  # a student beside its teacher (base_model)
        model, new_weights, teacher, distilled = distill.start(
            settings,
            fence,
            task=task,
            base=inputs.base,
            method=spec.method,
            label_names=prepared.label_names,
        )
    else:
        model, new_weights = load_starting_model(
            task, inputs.base, label_names=prepared.label_names
        )
    config = model.config
    length_limit = effective_max_length(
        MAX_LENGTH_LIMIT,
        tokenizer,
        config,
        reserved=adapters.reserved_positions(spec.method, config),
    )
    options = task.options_model.model_validate(spec.task_options)
    label2id = {name: i for i, name in enumerate(prepared.label_names)}

    def encoder(max_length: int, for_eval: bool) -> Any:
        return task.preprocess(
            tokenizer, label2id=label2id, max_length=max_length, options=options, for_eval=for_eval
        )

    # The base model's forward arguments (an adapter's wrapper takes **kwargs).
    keep = training_data.model_input_columns(model)
    details: dict[str, Any] = {"new_weights": new_weights}
    if isinstance(spec.method, adapters.PeftMethod):
        # AdaLoRA's schedule needs the step count, known once "auto" values are resolved (which
        # needs the parameter counts): scheduled provisionally here, for real below.
        model = adapters.apply_adapter(
            model,
            task=task,
            method=spec.method,
            new_weights=new_weights,
            total_steps=adapters.PROVISIONAL_STEPS,
        )
    elif isinstance(spec.method, HeadOnlyMethod):
        freeze(model, new_weights=new_weights, top_layers=None)
    elif isinstance(spec.method, FullMethod) and spec.method.train_top_layers is not None:
        freeze(model, new_weights=new_weights, top_layers=spec.method.train_top_layers)
    trainable, total = count_parameters(model)
    details["parameters"] = {"trainable": trainable, "total": total}
    fence.log(
        f"{spec.method.type} fine-tuning: {trainable:,} of {total:,} parameters train"
        f" ({100 * trainable / max(total, 1):.2f}%)",
        **details,
    )

    hp = auto.resolve_for_training(
        spec.hyperparameters,
        auto.AutoInputs(
            task=task,
            method=defaults_method(spec.method),
            train_rows=prepared.train.num_rows,
            previous=inputs.job.resolved_hyperparameters,
            device=devices.select_device(),
            length_limit=length_limit,
            processes=world.size,
        ),
        train=prepared.train,
        seed=spec.seed,
        tokenizer=tokenizer,
        config=config,
        encoder=encoder,
        parameters=details["parameters"],
    )
    # Free memory, read by the batch size rule, differs between ranks: rank 0's values hold.
    hp = world.broadcast(hp)
    details["max_length"] = hp.max_length
    first_input = tokenizer.model_input_names[0]
    train = training_data.tokenize(
        prepared.train, encoder(hp.max_length, False), keep=keep, length_of=first_input
    )
    validation = training_data.tokenize(
        prepared.validation,
        encoder(hp.max_length, True),
        keep=keep | set(task.eval_only_columns),
        length_of=first_input,
    )

    if hp.dropout is not None:
        set_dropout(model, hp.dropout)
    # A step trains batch_size x gradient_accumulation_steps rows on each process.
    effective_batch = hp.batch_size * hp.gradient_accumulation_steps * world.size
    steps_per_epoch = math.ceil(train.num_rows / effective_batch)
    steps = hp.max_steps or max(1, math.ceil(steps_per_epoch * hp.epochs))
    if isinstance(spec.method, adapters.PeftMethod):
        adapters.schedule(model, spec.method, total_steps=steps)
        details["adapter"] = adapters.resolved_adapter_config(model)
    args = _training_args(hp, seed=spec.seed, output_dir=output_dir, steps=steps, world=world)
    resolved = {
        **hp.model_dump(mode="json"),
        "torch_threads": torch_threads(settings, world),
        "device": args.device.type,
        "processes": world.size,
        "effective_batch_size": effective_batch,
    }
    details["hyperparameters"] = resolved
    details["resolved"] = hp
    fence.training_started(hyperparameters=resolved, parameters=details["parameters"])
    fence.log(f"hyperparameters: {resolved}", **resolved)

    callbacks: list[Any] = [
        JobProgressCallback(
            fence, poll_seconds=settings.cancel_poll_seconds, primary_metric=task.primary_metric
        )
    ]
    if world.size > 1:
        callbacks.append(ShardReport(fence, world, train_rows=train.num_rows))
    callbacks += stopping.callbacks(hp)
    callbacks += adapters.training_callbacks(model)
    trainer_class = ordered_eval_trainer()
    if teacher is not None:  # its training steps add the teacher's soft targets
        details |= {"teacher": teacher, "distillation": distilled}
        trainer_class = distill.trainer_class(trainer_class, teacher)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=training_data.make_collator(task, tokenizer),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(
            prepared.label_names,
            options=options,
            eval_rows=prepared.validation,
            eval_features=validation,
        ),
        callbacks=callbacks,
    )
    # Losses go to the job's events; the Trainer's own printing of them would only fill the log.
    trainer.remove_callback(PrinterCallback)
    return trainer, callbacks[0], details


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
    details: dict[str, Any],
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
        "head_weights": details["new_weights"],
        "method": {**inputs.spec.method.model_dump(mode="json"), **details.get("adapter", {})},
        "hyperparameters": details["hyperparameters"],
        "task_options": inputs.spec.task_options,
        "max_length": details["max_length"],
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
        "parameters": details["parameters"],
        "training": training,
        **({"distillation": details["distillation"]} if "distillation" in details else {}),
        "versions": library_versions(),
    }


def torch_threads(settings: Settings, world: World) -> int:
    """Threads each training process computes with: the configured count shared among them."""
    return max(1, devices.thread_count(settings.training_threads) // world.size)


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
    trainer, callback, details = _build_trainer(
        settings, inputs, prepared, fence, output_dir=saved, world=world
    )
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
    teacher_metrics = None
    if "teacher" in details:  # beside the student's, on the same rows
        teacher_metrics = distill.teacher_metrics(trainer, details["teacher"], fence)
        details["distillation"]["teacher_metrics"] = teacher_metrics
    if not world.is_main:
        return None
    fence.raise_if_cancelled()
    hp: ResolvedHyperparameters = details["resolved"]
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
    artifact = adapters.artifact_kind(inputs.spec.method)
    meta = _metadata(
        inputs,
        prepared,
        model_id=model_id,
        metrics=metrics,
        judgement=judgement,
        details=details,
        training=training,
    )
    save = adapters.saver(trainer.model, trainer.processing_class, merge=artifact == "merged")
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
        parent_metrics=teacher_metrics,
        baseline_metrics=judgement.baseline_metrics,
        quality=judgement.quality,
        job_id=inputs.job.id,
        train_dataset_id=inputs.train_row.id,
        validation_dataset_id=inputs.validation_row.id if inputs.validation_row else None,
        hyperparameters=details["hyperparameters"],
        storage_path=written.storage_path,
        size_bytes=written.size_bytes,
        artifact=artifact,
        parent_model_id=inputs.base.parent_model_id,
        parameters=details["parameters"],
    )
    return row, written
