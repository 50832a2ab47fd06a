"""The JobKind protocol: what the API side knows of a kind of job.

A job's kind follows from its `method.type`: a fine-tuning method (app/ml/methods) makes a train
job; quantize and export are kinds of their own, whose `method` holds the kind's options. A kind
owns the options it accepts and how a job of it is checked and resolved at submission (its
datasets and the spec it stores); what runs it is the worker's side of the same name
(worker/kinds/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.core.config import Settings
    from app.db.models import Dataset
    from app.job.schemas import JobCreate, JobSpec
    from app.ml.methods import MethodOptions
    from app.ml.tasks import TaskSpec


@dataclass
class SubmitInputs:
    """A job's datasets and the resolved spec stored on its row."""

    train: Dataset
    validation: Dataset | None
    spec: JobSpec


class JobKind(Protocol):
    name: str
    # Whether its jobs train (and so may run as several data-parallel processes).
    trains: bool

    def options_models(self) -> Mapping[str, type[MethodOptions]]:
        """The `method.type`s a job of this kind is submitted with, and their options models."""
        ...

    def inputs(
        self, session: Session, *, settings: Settings, tenant: str, spec: JobCreate, task: TaskSpec
    ) -> SubmitInputs:
        """The job's datasets and resolved spec, every field checked (InvalidInput naming it)."""
        ...
