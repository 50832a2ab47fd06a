"""The MethodSpec base: what the API side knows of a fine-tuning method.

A method is its options model (the job spec's `method`, tagged by `type`), the learning rate a job
gets when it names none, the checks and defaults applied when a job is submitted, what the trained
model directory holds (its artifact) and how it is served. How it builds the trainable model and
saves it is the worker's side of the same name (worker/training/methods/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.basemodel.schemas import ResolvedBaseModel
    from app.core.config import Settings
    from app.job.schemas import Hyperparameters, JobCreate
    from app.ml.tasks import TaskSpec

# Model.artifact of a trained model: a whole model directory, a peft adapter alone, or an adapter
# folded into the base weights at registration (loaded like a full model).
FULL = "full"
ADAPTER = "adapter"
MERGED = "merged"

MERGE_DESCRIPTION = (
    "Fold the trained adapter into the base weights when the model is registered: a full model "
    "directory (artifact 'merged') that needs no peft to load, at the size of the base model. "
    "Otherwise the adapter is saved alone (artifact 'adapter') and merged when it is loaded."
)


class MethodOptions(BaseModel):
    """The job spec's `method`: a method's (or a job kind's) options, tagged by `type`."""

    model_config = ConfigDict(extra="forbid")

    type: str


OptionsT = TypeVar("OptionsT", bound=MethodOptions)


@dataclass(frozen=True)
class SubmitContext:
    """What a method's submit-time checks may look at besides its own options."""

    task: TaskSpec
    hyperparameters: Hyperparameters
    # The job's base_model as given, and its transformer layer count where its config says.
    base_model: str
    num_layers: int | None


class MethodSpec(Generic[OptionsT]):
    """One fine-tuning method, as the API sees it; subclasses set the fields and override what
    differs. The registry (app/ml/methods/__init__.py) holds one instance per method."""

    name: str
    options_model: type[OptionsT]
    # The learning rate of a job that names none, where its task sets none for the method.
    default_learning_rate: float
    # Serving: whether models of this method load as named adapters of one shared copy of their
    # base, their rows mixed in one batch (app/predict/shared.py); else each loads on its own.
    shares_base: bool = False
    # Why a model of this method cannot be folded into plain weights (which quantize and export
    # need of their parent); None where it can.
    not_mergeable: str | None = None
    # The method whose defaults (the task's hyperparameters for it, the learning rate) a job
    # takes; None: its own (distill trains every weight of its student, as full does).
    defaults_of: str | None = None

    def defaults_name(self) -> str:
        """The method name the task's default hyperparameters are looked up by."""
        return self.defaults_of or self.name

    def starting_model(
        self, session: Session, *, settings: Settings, tenant: str, spec: JobCreate
    ) -> ResolvedBaseModel:
        """The model a job starts from, resolved and checked at submission (InvalidInput naming
        the field): the job's base_model (a catalog id, or a registered model to go on from)."""
        from app.registry.lineage import resolve_job_base

        return resolve_job_base(
            session, settings=settings, tenant=tenant, task=spec.task, base_model=spec.base_model
        )

    def fill_defaults(self, options: OptionsT, *, base_model: str) -> OptionsT:
        """The options with defaults that depend on other fields filled, as they are stored
        (`base_model`: the job's, as given)."""
        return options

    def check(self, options: OptionsT, context: SubmitContext) -> None:
        """Raise InvalidInput naming the field for options this job cannot train with."""

    def artifact(self, options: OptionsT) -> str:
        """What the model directory holds (Model.artifact): FULL, ADAPTER or MERGED."""
        return FULL

    def datasets_named(self, options: OptionsT) -> list[str]:
        """Dataset ids the options name besides the job's train and validation datasets (no
        foreign key covers them): deleting one waits until no queued or running job names it."""
        return []


def adapter_artifact(merge_adapter: bool) -> str:
    """A peft method's artifact: the adapter alone, or folded into the base at registration."""
    return MERGED if merge_adapter else ADAPTER
