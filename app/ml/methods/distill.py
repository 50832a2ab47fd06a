"""Distillation (method distill): its options, the checks of a distill job at submission, and its
MethodSpec (the worker's side: worker/training/methods/distill.py).

The teacher is a registered model, named as the job's base_model "model:<id>" (as quantize and
export name the model they work from); `method.teacher` may repeat it. The student is either
`{"layers": k}`, the teacher itself with k of its transformer layers kept (the last of each of
k equal blocks, or the ones named; task head and all), or a catalog base model with a fresh head.
It learns the teacher's labels in the teacher's order from the train set's gold labels and the
teacher's softened outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.basemodel.schemas import ResolvedBaseModel
from app.basemodel.service import resolve_base_model
from app.core.config import Settings
from app.core.errors import InvalidInput
from app.db.models import Dataset, Model
from app.db.session import get_by_id
from app.ml.lineage import parent_id
from app.ml.loading import load_tokenizer
from app.ml.methods.base import MethodOptions, MethodSpec
from app.ml.methods.full import Full
from app.registry.lineage import resolve_job_base

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.job.schemas import JobCreate


class StudentLayers(BaseModel):
    """A student made of the teacher with fewer layers."""

    model_config = ConfigDict(extra="forbid")

    layers: (
        Annotated[int, Field(ge=1, le=1000)]
        | Annotated[list[Annotated[int, Field(ge=0, le=999)]], Field(min_length=1, max_length=1000)]
    ) = Field(
        description="The teacher's transformer layers the student keeps (fewer than it has). "
        "A count k keeps the last layer of each of k equal blocks of the teacher's n: "
        "round((i + 1) * n / k) - 1 for i = 0..k-1, halves up (3 of 6: 1, 3 and 5; 6 of 12: "
        "every other layer up to the top), the top layer always; a list names them, counted "
        "from 0, in ascending order (e.g. [0, 3, 5]). The embeddings, whatever sits above the "
        "layers and the task head are the teacher's.",
    )

    @field_validator("layers")
    @classmethod
    def _ascending(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, list):
            for before, after in zip(value, value[1:], strict=False):
                if after <= before:
                    raise ValueError(
                        f"the layers kept must be distinct and in ascending order; {after} "
                        f"follows {before}"
                    )
        return value

    def count(self) -> int:
        """How many layers the student has."""
        return self.layers if isinstance(self.layers, int) else len(self.layers)


class DistillMethod(MethodOptions):
    """Knowledge distillation: a student trains on the gold labels and on the teacher's outputs
    softened by `temperature`: loss = alpha * CE(gold) + (1 - alpha) * T^2 * KL(teacher_T ||
    student_T), per labelled token for NER, over start and end positions for QA. The teacher is
    base_model ("model:<id>", a full or adapter model of the job's task); every weight of the
    student trains, with full fine-tuning's default hyperparameters."""

    type: Literal["distill"]
    teacher: str | None = Field(
        default=None,
        min_length=1,
        max_length=300,
        description='The teacher, "model:<id>": the job\'s base_model, which it may only '
        "repeat; filled in from it when omitted.",
    )
    student: Annotated[str, Field(min_length=1, max_length=300)] | StudentLayers = Field(
        description='{"layers": k}: the teacher with k of its layers kept (its weights, head '
        "and tokenizer); or the id of a base model (/v1/base-models) whose vocabulary is the "
        "teacher's, which starts with a fresh head.",
    )
    temperature: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="Softens both models' outputs before they are compared (T); the KL term is "
        "scaled by T^2 so that its gradients keep their size.",
    )
    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of the gold labels' loss; 1 - alpha weighs the teacher's.",
    )
    hidden_weight: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description='Weight of a third term for a {"layers": k} student: the mean cosine '
        "distance (1 - cos) between each of its layers' token vectors and those of the "
        "teacher's layer it was copied from, over the non-padding tokens (as DistilBERT's "
        "cosine loss on hidden states). 0 (the default) leaves it out.",
    )
    transfer_dataset: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="A transfer set: the id of a dataset of the job's task whose rows the "
        "teacher labels before training (its own labels, if any, are not read), and which the "
        "student then trains on beside the train set, its gold term on the teacher's top "
        "answer and its soft term on the teacher's outputs, as DistilBERT and TinyBERT trained "
        "on text their teacher labelled. Neither the validation dataset nor a copy of it.",
    )


class Distill(MethodSpec[DistillMethod]):
    name = "distill"
    options_model = DistillMethod
    # Every weight of the student trains, as under full fine-tuning: a distill job takes full's
    # default hyperparameters (learning rate, batch size, QA epochs).
    defaults_of = Full.name
    default_learning_rate = Full.default_learning_rate

    def starting_model(
        self, session: Session, *, settings: Settings, tenant: str, spec: JobCreate
    ) -> ResolvedBaseModel:
        # base_model is the teacher; the student starts from it or from a catalog base.
        return check_distill(session, settings=settings, tenant=tenant, spec=spec)

    def fill_defaults(self, options: DistillMethod, *, base_model: str) -> DistillMethod:
        # The job shows its teacher.
        return options.model_copy(update={"teacher": base_model})

    def datasets_named(self, options: DistillMethod) -> list[str]:
        # The transfer set, which the worker reads before training.
        return [options.transfer_dataset] if options.transfer_dataset else []


def _teacher_field(spec: JobCreate) -> str:
    assert isinstance(spec.method, DistillMethod)
    return "method.teacher" if spec.method.teacher is not None else "base_model"


def check_teacher(
    session: Session, *, settings: Settings, tenant: str, spec: JobCreate
) -> ResolvedBaseModel:
    """The teacher of a distill job as a base (InvalidInput naming base_model or method.teacher:
    not a registered model, unknown, of another task, one that cannot be merged)."""
    method = spec.method
    assert isinstance(method, DistillMethod)
    if method.teacher is not None and method.teacher != spec.base_model:
        raise InvalidInput(
            f"method.teacher: '{method.teacher}' is not the job's base_model "
            f"'{spec.base_model}'; the teacher is the base_model (leave method.teacher out)",
            field="method.teacher",
        )
    field = _teacher_field(spec)
    model_id = parent_id(spec.base_model)
    if model_id is None:
        raise InvalidInput(
            f'{field}: distill needs the teacher as base_model "model:<id>", a registered '
            f"model of yours; '{spec.base_model}' is a base model (fine-tune it first)",
            field=field,
        )
    row = get_by_id(session, Model, model_id)
    if row is None or row.tenant_id != tenant:
        # Another tenant's model answers as a missing one: ids do not leak across tenants.
        raise InvalidInput(
            f"{field}: unknown teacher '{spec.base_model}': no registered model '{model_id}'",
            field=field,
        )
    if row.task != spec.task:
        raise InvalidInput(
            f"{field}: the teacher '{spec.base_model}' is a '{row.task}' model; a "
            f"'{spec.task}' student cannot learn from it",
            field=field,
        )
    try:  # what else keeps a model from being a base: an int8 or ONNX copy, a lost lineage...
        return resolve_job_base(
            session, settings=settings, tenant=tenant, task=spec.task, base_model=spec.base_model
        )
    except InvalidInput as exc:
        if field == exc.details.get("field"):
            raise
        raise InvalidInput(f"{field}: {exc.message}", field=field) from None


def check_kept(student: StudentLayers, total: int, *, teacher: str) -> None:
    """The layers a student keeps exist in a teacher of `total` layers and are fewer than all of
    them (InvalidInput naming method.student.layers)."""
    if student.count() >= total:
        named = "" if isinstance(student.layers, int) else f" ({student.count()} named)"
        raise InvalidInput(
            f"method.student.layers: {student.layers}{named} must be fewer than the teacher's "
            f"{total} layers ('{teacher}')",
            field="method.student.layers",
        )
    if isinstance(student.layers, list) and student.layers[-1] >= total:
        raise InvalidInput(
            f"method.student.layers: the teacher '{teacher}' has no layer {student.layers[-1]}; "
            f"its {total} layers are numbered 0 to {total - 1}",
            field="method.student.layers",
        )


def check_student(settings: Settings, *, spec: JobCreate, teacher: ResolvedBaseModel) -> None:
    """The student fits the teacher: k below the teacher's layer count, or a base model of the
    same vocabulary (InvalidInput naming method.student)."""
    method = spec.method
    assert isinstance(method, DistillMethod)
    student = method.student
    if method.hidden_weight > 0 and not isinstance(student, StudentLayers):
        raise InvalidInput(
            "method.hidden_weight: matching hidden states needs a student made of the "
            'teacher\'s own layers ({"layers": k}); a base model student has no layer of the '
            "teacher's to match",
            field="method.hidden_weight",
        )
    if isinstance(student, StudentLayers):
        total = teacher.num_layers
        if total is not None:
            check_kept(student, total, teacher=spec.base_model)
        return
    if parent_id(student) is not None:
        raise InvalidInput(
            f"method.student: '{student}' is a registered model; a student is a base model id "
            '(/v1/base-models) or {"layers": k}',
            field="method.student",
        )
    try:
        base = resolve_base_model(settings, student)
    except InvalidInput as exc:
        available = exc.details.get("available")
        raise InvalidInput(
            f"method.student: {exc.message}", field="method.student", available=available
        ) from None
    try:
        same = same_vocabulary(base.path_or_hub_id, teacher.path_or_hub_id)
    except (OSError, ValueError) as exc:  # a directory without a readable tokenizer
        raise InvalidInput(
            f"method.student: the tokenizers of '{student}' and of the teacher cannot both be "
            f"read here ({type(exc).__name__}), so their vocabularies cannot be compared",
            field="method.student",
        ) from None
    if not same:
        raise InvalidInput(
            f"method.student: '{student}' does not tokenize as the teacher does (another "
            "vocabulary), so their outputs cannot be compared token by token; pick a base model "
            'of the teacher\'s family, or {"layers": k}',
            field="method.student",
        )


def same_vocabulary(a: str, b: str) -> bool:
    """Whether two model directories' tokenizers map the same tokens to the same ids."""
    return bool(load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab())


def check_distill(
    session: Session, *, settings: Settings, tenant: str, spec: JobCreate
) -> ResolvedBaseModel:
    """Every check of a distill job's teacher and student; the teacher as a base."""
    teacher = check_teacher(session, settings=settings, tenant=tenant, spec=spec)
    check_student(settings, spec=spec, teacher=teacher)
    check_transfer(session, tenant=tenant, spec=spec)
    return teacher


def check_transfer(session: Session, *, tenant: str, spec: JobCreate) -> None:
    """The transfer set is the tenant's dataset of the job's task, and not what the student is
    evaluated on (InvalidInput naming method.transfer_dataset)."""
    from app.job.datasets import dataset_for

    method = spec.method
    assert isinstance(method, DistillMethod)
    if method.transfer_dataset is None:
        return
    field = "method.transfer_dataset"
    transfer = dataset_for(
        session, method.transfer_dataset, tenant=tenant, field=field, task=spec.task
    )
    validation = (
        get_by_id(session, Dataset, spec.validation_dataset)
        if spec.validation_dataset is not None
        else None
    )
    train = get_by_id(session, Dataset, spec.train_dataset) if spec.train_dataset else None
    if train is not None and set(train.columns) != set(transfer.columns):
        raise InvalidInput(
            f"{field}: dataset '{transfer.id}' has the columns {sorted(transfer.columns)} and "
            f"train_dataset '{train.id}' has {sorted(train.columns)}; a transfer set has the "
            "train set's columns (its labels are replaced by the teacher's)",
            field=field,
        )
    if validation is not None and (
        validation.id == transfer.id or validation.sha256 == transfer.sha256
    ):
        same = "is" if validation.id == transfer.id else "holds the same file as"
        raise InvalidInput(
            f"{field}: dataset '{transfer.id}' {same} the job's validation dataset; the student "
            "would train on the rows it is evaluated on",
            field=field,
        )
