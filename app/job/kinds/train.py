"""Train jobs: fine-tune a base model (or a registered one) with a method of app/ml/methods."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import InvalidInput
from app.core.queue import GPU_QUEUE, TRAINING_QUEUE
from app.core.validation import plain_errors
from app.db.models import Dataset
from app.job.controls import check_controls, resolve_controls
from app.job.datasets import dataset_for, dataset_summary, validation_dataset_for
from app.job.kinds.base import SubmitInputs
from app.job.schemas import Hyperparameters, JobCreate, JobSpec, ResolvedResources
from app.ml.methods import METHODS, MethodOptions, SubmitContext, get_method
from app.ml.tasks import DatasetSummary, TaskSpec
from app.registry.lineage import check_parent_labels

# Fewest rows a split train set needs so both halves see every label at least once.
MIN_TRAIN_ROWS = 4


class Train:
    name = "train"
    trains = True

    def options_models(self) -> Mapping[str, type[MethodOptions]]:
        return {name: method.options_model for name, method in METHODS.items()}

    def inputs(
        self, session: Session, *, settings: Settings, tenant: str, spec: JobCreate, task: TaskSpec
    ) -> SubmitInputs:
        if spec.train_dataset is None:
            raise InvalidInput(
                f"train_dataset: required for method '{spec.method.type}'", field="train_dataset"
            )
        # The job's base_model as its method reads it (distill: the teacher).
        base = get_method(spec.method.type).starting_model(
            session, settings=settings, tenant=tenant, spec=spec
        )
        _check_method(spec, task, num_layers=base.num_layers)
        train = dataset_for(
            session, spec.train_dataset, tenant=tenant, field="train_dataset", task=task.name
        )
        val: Dataset | None = None
        if spec.validation_dataset is not None:
            val = validation_dataset_for(
                session, spec.validation_dataset, tenant=tenant, task=task, train=train
            )
        else:
            if train.num_rows < MIN_TRAIN_ROWS:
                raise InvalidInput(
                    f"train_dataset has {train.num_rows} rows; at least {MIN_TRAIN_ROWS} are "
                    "needed to hold out a validation split (or give validation_dataset)",
                    field="train_dataset",
                )
            task.check_compatible(dataset_summary(train), dataset_summary(train))
        check_parent_labels(base, train=train, validation=val)

        resolved = resolve_spec(spec, task, dataset_summary(train))
        check_controls(settings, resolved.hyperparameters, task)
        return SubmitInputs(train, val, resolved)


def _check_method(spec: JobCreate, task: TaskSpec, *, num_layers: int | None) -> None:
    """The task must be able to train with the method, and the method's own checks pass."""
    method = spec.method
    reason = task.unsupported_methods.get(method.type)
    if reason is not None:
        raise InvalidInput(
            f"method.type: '{method.type}' cannot train '{task.name}' models: {reason}",
            field="method.type",
        )
    context = SubmitContext(
        task=task,
        hyperparameters=spec.hyperparameters,
        base_model=spec.base_model,
        num_layers=num_layers,
    )
    get_method(method.type).check(method, context)


def resolve_spec(spec: JobCreate, task: TaskSpec, train: DatasetSummary | None = None) -> JobSpec:
    """Fill the defaults that depend on other fields, so the stored spec says what will run."""
    hp = spec.hyperparameters
    method = get_method(spec.method.type)
    # Fields the client left out take the task's defaults, then the method's learning rate.
    task_defaults = {
        k: v
        for k, v in task.default_hyperparameters(
            method.defaults_name(), train_rows=train.num_rows if train else None
        ).items()
        if k not in hp.model_fields_set
    }
    hp = Hyperparameters.model_validate({**hp.model_dump(), **task_defaults})
    if hp.learning_rate is None:
        hp = hp.model_copy(update={"learning_rate": method.default_learning_rate})
    # "auto" values stay as asked: the worker resolves them when training starts.
    hp = resolve_controls(hp, task)
    try:
        # The train set's summary lets a task resolve "auto" options from the data (QA's
        # version_2_with_negative: true when the train set has unanswerable questions).
        options = task.options_model.model_validate(
            spec.task_options, context={"train_summary": train}
        )
    except ValidationError as exc:
        problems = plain_errors(exc.errors(), root=task.options_model, prefix=("task_options",))
        raise InvalidInput(
            "; ".join(p.message for p in problems) + f" (task '{task.name}')",
            field=problems[0].field,
            errors=[p.as_dict() for p in problems],
        ) from None
    # A job that needs a CUDA GPU (the submit-time device check passed it) goes where GPUs are.
    default_queue = GPU_QUEUE if hp.mixed_precision in ("bf16", "fp16") else TRAINING_QUEUE
    return JobSpec(
        method=method.fill_defaults(spec.method, base_model=spec.base_model),
        hyperparameters=hp,
        task_options=options.model_dump(mode="json"),
        seed=spec.seed,
        resources=ResolvedResources(
            queue=spec.resources.queue or default_queue, processes=spec.resources.processes
        ),
    )
