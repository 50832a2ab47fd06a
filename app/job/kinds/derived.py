"""What the kinds that derive a model from a registered one (quantize, export) share at
submission: the parent, the rows the job is evaluated on, and the spec it stores.

Such a job trains nothing. It is evaluated on exactly the rows its parent was evaluated on
(the parent's validation dataset, or the parent's held-out split drawn again with the parent's
seed and validation_split from the same train set), unless it names a validation_dataset, so the
quantized model's metrics and the parent's can be read side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.basemodel.schemas import ResolvedBaseModel
from app.core.config import Settings
from app.core.errors import InvalidInput
from app.db.models import Dataset, Job, Model
from app.db.session import get_by_id
from app.job.datasets import validation_dataset_for
from app.job.kinds.base import SubmitInputs
from app.job.schemas import Hyperparameters, JobCreate, JobSpec
from app.ml.lineage import parent_id
from app.ml.methods import METHODS, MethodOptions
from app.ml.tasks import TaskSpec
from app.registry.lineage import check_parent_labels, resolve_job_base


def check_no_training_fields(spec: JobCreate) -> None:
    """Quantize and export take no training hyperparameters, task options or seed: a field set
    to anything but its default is refused (422 naming it) rather than silently ignored."""
    kind = spec.method.type
    defaults = Hyperparameters()
    for name in Hyperparameters.model_fields:
        if getattr(spec.hyperparameters, name) != getattr(defaults, name):
            raise InvalidInput(
                f"hyperparameters.{name}: method {kind} trains nothing and takes no "
                "hyperparameters; leave it out",
                field=f"hyperparameters.{name}",
            )
    if spec.task_options:
        raise InvalidInput(
            f"task_options: method {kind} evaluates with its parent's task options; leave them out",
            field="task_options",
        )
    if spec.seed != JobCreate.model_fields["seed"].default:
        raise InvalidInput(
            f"seed: method {kind} draws nothing at random (the parent's held-out validation "
            "rows are drawn again with the parent's seed); leave it out",
            field="seed",
        )


def derived_parent(
    session: Session, *, settings: Settings, tenant: str, spec: JobCreate
) -> tuple[Model, ResolvedBaseModel]:
    """The registered model a quantize or export job derives from, and its weights as a base
    (InvalidInput naming base_model: a catalog id, an unknown model, another task, a quantized
    model...)."""
    kind = spec.method.type
    model_id = parent_id(spec.base_model)
    if model_id is None:
        raise InvalidInput(
            f"base_model: {kind} needs base_model model:<id>, a registered model of yours; "
            f"'{spec.base_model}' is a base model (fine-tune it first)",
            field="base_model",
        )
    base = resolve_job_base(
        session, settings=settings, tenant=tenant, task=spec.task, base_model=spec.base_model
    )
    parent = get_by_id(session, Model, model_id)
    assert parent is not None  # resolve_job_base found it
    method = METHODS.get(parent.method)
    if method is not None and method.not_mergeable is not None:
        mergeable = [name for name, m in METHODS.items() if m.not_mergeable is None]
        raise InvalidInput(
            f"base_model: '{spec.base_model}' {method.not_mergeable}; method {kind} needs a "
            f"model of method {', '.join(mergeable[:-1])} or {mergeable[-1]}",
            field="base_model",
        )
    if spec.train_dataset is not None and spec.train_dataset != parent.train_dataset_id:
        raise InvalidInput(
            f"train_dataset: method {kind} trains nothing; its job's train dataset is its "
            f"parent's ('{parent.train_dataset_id}'): leave it out",
            field="train_dataset",
        )
    return parent, base


def derived_spec(session: Session, *, spec: JobCreate, parent: Model, held_out: bool) -> JobSpec:
    """The stored spec: the parent's seed, validation_split and task options, with which the
    worker draws the parent's held-out rows again (when `held_out`) and evaluates."""
    parent_job = get_by_id(session, Job, parent.job_id)
    parent_spec: JobSpec | None = None
    try:
        parent_spec = JobSpec.model_validate(parent_job.spec if parent_job else None)
    except ValidationError:
        parent_spec = None
    if parent_spec is None:
        if held_out:
            raise InvalidInput(
                f"validation_dataset: the validation rows of 'model:{parent.id}' (held out "
                "of its train set) cannot be drawn again: its job's spec is not on record; "
                "name a validation_dataset",
                field="validation_dataset",
            )
        return JobSpec(method=spec.method, hyperparameters=Hyperparameters(), seed=spec.seed)
    split: dict[str, Any] = {"validation_split": parent_spec.hyperparameters.validation_split}
    return JobSpec(
        method=spec.method,
        hyperparameters=Hyperparameters(**split),
        task_options=parent_spec.task_options,
        seed=parent_spec.seed,
    )


class DerivingKind:
    """A kind of job that derives a serving artifact from a registered model instead of training
    one; a subclass names it and its options model (whose `type` is the kind's name)."""

    name: str
    options_model: type[MethodOptions]
    trains = False

    def options_models(self) -> Mapping[str, type[MethodOptions]]:
        return {self.name: self.options_model}

    def inputs(
        self, session: Session, *, settings: Settings, tenant: str, spec: JobCreate, task: TaskSpec
    ) -> SubmitInputs:
        return derived_inputs(session, settings=settings, tenant=tenant, spec=spec, task=task)


def derived_inputs(
    session: Session, *, settings: Settings, tenant: str, spec: JobCreate, task: TaskSpec
) -> SubmitInputs:
    """A quantize or export job's datasets (its parent's train set; the parent's validation set
    unless it names one) and stored spec (the parent's seed and split), every field checked."""
    check_no_training_fields(spec)
    parent, base = derived_parent(session, settings=settings, tenant=tenant, spec=spec)
    # A dataset that a job (the parent's) uses cannot be deleted.
    train = get_by_id(session, Dataset, parent.train_dataset_id)
    if train is None:
        raise InvalidInput(
            f"base_model: the train dataset of '{spec.base_model}' no longer exists",
            field="base_model",
        )
    val: Dataset | None = None
    if spec.validation_dataset is not None:
        val = validation_dataset_for(
            session, spec.validation_dataset, tenant=tenant, task=task, train=train
        )
        check_parent_labels(base, train=train, validation=val)
    elif parent.validation_dataset_id is not None:
        val = get_by_id(session, Dataset, parent.validation_dataset_id)
    resolved = derived_spec(session, spec=spec, parent=parent, held_out=val is None)
    return SubmitInputs(train, val, resolved)
