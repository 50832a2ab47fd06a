"""The datasets a job names: the tenant's own, of the job's task."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.core.errors import InvalidInput
from app.db.models import Dataset
from app.db.session import get_by_id
from app.ml.tasks import DatasetSummary, TaskSpec


def dataset_summary(ds: Dataset) -> DatasetSummary:
    """What validation learned about a stored dataset, as the tasks' checks take it."""
    return DatasetSummary(
        num_rows=ds.num_rows,
        columns=list(ds.columns),
        label_names=ds.label_names,
        label_counts=ds.label_counts,
        stats=ds.stats or {},
    )


def dataset_for(
    session: Session, dataset_id: str, *, tenant: str, field: str, task: str
) -> Dataset:
    """The tenant's dataset `dataset_id` of `task`; InvalidInput naming `field` otherwise."""
    ds = get_by_id(session, Dataset, dataset_id)
    if ds is None or ds.tenant_id != tenant:
        raise InvalidInput(f"{field}: dataset '{dataset_id}' does not exist", field=field)
    if ds.task != task:
        raise InvalidInput(
            f"{field}: dataset '{dataset_id}' is a '{ds.task}' dataset, not '{task}'", field=field
        )
    return ds


def validation_dataset_for(
    session: Session, dataset_id: str, *, tenant: str, task: TaskSpec, train: Dataset
) -> Dataset:
    """A job's named validation dataset: the tenant's, of the task, compatible with `train`."""
    val = dataset_for(
        session, dataset_id, tenant=tenant, field="validation_dataset", task=task.name
    )
    task.check_compatible(dataset_summary(train), dataset_summary(val))
    return val


def validation_warnings(task: TaskSpec, *, train: Dataset, validation: Dataset) -> list[str]:
    """What a job is told about its validation set: the train set's classes it has no rows of."""
    absent = task.absent_labels(train.label_names or [], dataset_summary(validation))
    return [absent.message(f"validation dataset {validation.id}")] if absent else []
