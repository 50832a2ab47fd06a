"""A train job's plan: the model as its method prepares it, the hyperparameters resolved for it,
the tokenized datasets and the Trainer that will run them, and what the job records of them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.job.schemas import ResolvedHyperparameters
from app.ml import device as devices
from app.ml.loading import load_tokenizer
from worker.training import adapters, auto, stopping
from worker.training import data as training_data
from worker.training.freezing import count_parameters, set_dropout
from worker.training.methods import StartingModel, TrainingMethod, training_method
from worker.training.shards import ShardReport
from worker.training.state import AttemptFence
from worker.training.world import SINGLE, World

if TYPE_CHECKING:
    import datasets
    from pydantic import BaseModel
    from transformers import PreTrainedTokenizerBase, Trainer

    from worker.training.callbacks import JobProgressCallback
    from worker.training.runner import JobInputs, PreparedData


@dataclass
class TrainingPlan:
    """A job's training, set up and not yet run, and what the job records of it (on its row, in
    its events and in the model's metadata)."""

    trainer: Trainer
    # Reports the job's progress; holds its timer and last evaluation.
    progress: JobProgressCallback
    method: TrainingMethod[Any]
    # The model as the method started it, and what the method keeps beside it (a teacher).
    starting: StartingModel
    # The task head's weight names (trained in full), recorded for a model continued from this.
    new_weights: list[str]
    # {"trainable": ..., "total": ...} weights of the model as it trains.
    parameters: dict[str, int]
    hyperparameters: ResolvedHyperparameters
    # The hyperparameters as the job row and the model record them: the resolved ones with the
    # device, torch threads, processes and effective batch size.
    recorded: dict[str, Any]
    # The method's settings as applied (an adapter's target modules...), beside its options.
    method_applied: dict[str, Any]


@dataclass
class _Prepared:
    """The starting model, as the job's method made it trainable."""

    model: Any
    # The starting model's config (a peft wrapper's forwards to it).
    config: Any
    tokenizer: PreTrainedTokenizerBase
    method: TrainingMethod[Any]
    starting: StartingModel
    new_weights: list[str]
    parameters: dict[str, int]
    # The most tokens an example may have (the tokenizer's, the positions a prefix leaves).
    length_limit: int
    # The base model's forward arguments, read before the method wrapped it (an adapter's
    # wrapper takes **kwargs): the columns the features keep.
    input_columns: set[str]


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
    """A Trainer that evaluates features in dataset order, whatever the train sampling, takes
    the model's loss for the per-batch mean it is, and whose checkpoints of peft models resume
    every method (see adapters.save_checkpoint_state)."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class OrderedEvalTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Our models' losses are per-batch means (the task heads ignore num_items_in_batch).
            # A forward that takes **kwargs (BERT's heads, peft's wrappers) makes the Trainer
            # take them for sums over the accumulated, gathered batch: it would not divide them
            # by gradient_accumulation_steps and would multiply them by the process count, so
            # the gradients (what max_grad_norm clips), the training loss and eval_loss would
            # be k or N times too large. As means, the Trainer scales them itself.
            self.model_accepts_loss_kwargs = False

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


def torch_threads(settings: Settings, world: World) -> int:
    """Threads each training process computes with: the configured count shared among them."""
    return max(1, devices.thread_count(settings.training_threads) // world.size)


def build_plan(
    settings: Settings,
    inputs: JobInputs,
    prepared: PreparedData,
    fence: AttemptFence,
    *,
    output_dir: Path,
    world: World,
) -> TrainingPlan:
    """Prepare the model, resolve the hyperparameters, tokenize, and set up the Trainer."""
    from transformers import set_seed

    task, spec = inputs.task, inputs.spec
    set_seed(spec.seed)  # before the head is initialised
    start = _trainable_model(settings, inputs, prepared.label_names, fence)
    options = task.options_model.model_validate(spec.task_options)
    # What the model trains on: the train split, and whatever the method adds to it.
    train_rows = start.method.train_rows(
        settings,
        fence,
        task=task,
        starting=start.starting,
        options=spec.method,
        rows=prepared.train,
        label_names=prepared.label_names,
        tokenizer=start.tokenizer,
    )
    prepared = dataclasses.replace(prepared, train=train_rows)
    label2id = {name: i for i, name in enumerate(prepared.label_names)}

    def encoder(max_length: int, for_eval: bool) -> Any:
        return task.preprocess(
            start.tokenizer,
            label2id=label2id,
            max_length=max_length,
            options=options,
            for_eval=for_eval,
        )

    hp = _resolved_hyperparameters(inputs, prepared, start, encoder, world)
    train, validation = _tokenized(start, prepared, encoder, hp, eval_only=task.eval_only_columns)

    if hp.dropout is not None:
        set_dropout(start.model, hp.dropout)
    # A step trains batch_size x gradient_accumulation_steps rows on each process.
    effective_batch = hp.batch_size * hp.gradient_accumulation_steps * world.size
    steps_per_epoch = math.ceil(train.num_rows / effective_batch)
    steps = hp.max_steps or max(1, math.ceil(steps_per_epoch * hp.epochs))
    start.method.schedule(start.model, spec.method, total_steps=steps)
    applied = start.method.applied(start.model)
    args = _training_args(hp, seed=spec.seed, output_dir=output_dir, steps=steps, world=world)
    recorded = {
        **hp.model_dump(mode="json"),
        "torch_threads": torch_threads(settings, world),
        "device": args.device.type,
        "processes": world.size,
        "effective_batch_size": effective_batch,
    }
    fence.training_started(hyperparameters=recorded, parameters=start.parameters)
    fence.log(f"hyperparameters: {recorded}", **recorded)

    trainer, progress = _trainer(
        settings,
        inputs,
        prepared,
        fence,
        start,
        args=args,
        hp=hp,
        world=world,
        options=options,
        features=(train, validation),
    )
    return TrainingPlan(
        trainer=trainer,
        progress=progress,
        method=start.method,
        starting=start.starting,
        new_weights=start.new_weights,
        parameters=start.parameters,
        hyperparameters=hp,
        recorded=recorded,
        method_applied=applied,
    )


def _trainable_model(
    settings: Settings, inputs: JobInputs, label_names: list[str], fence: AttemptFence
) -> _Prepared:
    """The starting model with the job's method applied (an adapter, frozen layers)."""
    task, spec = inputs.task, inputs.spec
    tokenizer = load_tokenizer(inputs.base.path_or_hub_id)
    method = training_method(spec.method.type)
    starting = method.start(
        settings, fence, task=task, base=inputs.base, options=spec.method, label_names=label_names
    )
    model, new_weights = starting.model, starting.new_weights
    config = model.config
    length_limit = effective_max_length(
        MAX_LENGTH_LIMIT, tokenizer, config, reserved=method.reserved_positions(spec.method, config)
    )
    input_columns = training_data.model_input_columns(model)
    # A method whose settings depend on the step count (AdaLoRA's schedule) is fitted to it once
    # "auto" values are resolved, which needs the parameter counts of the model it prepares.
    model = method.prepare(model, task=task, options=spec.method, new_weights=new_weights)
    trainable, total = count_parameters(model)
    parameters = {"trainable": trainable, "total": total}
    fence.log(
        f"{spec.method.type} fine-tuning: {trainable:,} of {total:,} parameters train"
        f" ({100 * trainable / max(total, 1):.2f}%)",
        new_weights=new_weights,
        parameters=parameters,
    )
    return _Prepared(
        model=model,
        config=config,
        tokenizer=tokenizer,
        method=method,
        starting=starting,
        new_weights=new_weights,
        parameters=parameters,
        length_limit=length_limit,
        input_columns=input_columns,
    )


def _resolved_hyperparameters(
    inputs: JobInputs, prepared: PreparedData, start: _Prepared, encoder: Any, world: World
) -> ResolvedHyperparameters:
    """The job's hyperparameters with every "auto" value and default made concrete."""
    spec = inputs.spec
    hp = auto.resolve_for_training(
        spec.hyperparameters,
        auto.AutoInputs(
            task=inputs.task,
            method=spec.method.type,
            train_rows=prepared.train.num_rows,
            previous=inputs.job.resolved_hyperparameters,
            device=devices.select_device(),
            length_limit=start.length_limit,
            processes=world.size,
        ),
        train=prepared.train,
        seed=spec.seed,
        tokenizer=start.tokenizer,
        config=start.config,
        encoder=encoder,
        parameters=start.parameters,
    )
    # Free memory, read by the batch size rule, differs between ranks: rank 0's values hold.
    return world.broadcast(hp)


def _tokenized(
    start: _Prepared,
    prepared: PreparedData,
    encoder: Any,
    hp: ResolvedHyperparameters,
    *,
    eval_only: tuple[str, ...],
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The train and validation rows as model features at the resolved max_length."""
    keep = start.input_columns
    first_input = start.tokenizer.model_input_names[0]
    train = training_data.tokenize(
        prepared.train, encoder(hp.max_length, False), keep=keep, length_of=first_input
    )
    validation = training_data.tokenize(
        prepared.validation,
        encoder(hp.max_length, True),
        keep=keep | set(eval_only),
        length_of=first_input,
    )
    return train, validation


def _trainer(
    settings: Settings,
    inputs: JobInputs,
    prepared: PreparedData,
    fence: AttemptFence,
    start: _Prepared,
    *,
    args: Any,
    hp: ResolvedHyperparameters,
    world: World,
    options: BaseModel,
    features: tuple[datasets.Dataset, datasets.Dataset],
) -> tuple[Trainer, JobProgressCallback]:
    """The Trainer with the job's callbacks: progress, shards, early stopping, the method's."""
    from transformers import PrinterCallback

    from worker.training.callbacks import JobProgressCallback

    task, (train, validation) = inputs.task, features
    progress = JobProgressCallback(
        fence, poll_seconds=settings.cancel_poll_seconds, primary_metric=task.primary_metric
    )
    callbacks: list[Any] = [progress]
    if world.size > 1:
        callbacks.append(ShardReport(fence, world, train_rows=train.num_rows))
    callbacks += stopping.callbacks(hp)
    callbacks += start.method.callbacks(start.model)
    trainer_class = start.method.trainer_class(ordered_eval_trainer(), start.starting)
    trainer = trainer_class(
        model=start.model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=training_data.make_collator(task, start.tokenizer),
        processing_class=start.tokenizer,
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
    return trainer, progress
