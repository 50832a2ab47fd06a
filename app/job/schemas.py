"""Job spec and job schemas. Option names follow peft's configs and TrainingArguments."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from app.core.expected import Tagged
from app.core.queue import TRAINING_QUEUE
from app.core.schemas import ParameterCounts
from app.db.models import Job
from app.ml.methods import MethodOptions
from app.ml.methods.full import FullMethod
from app.ml.quality import BASELINE_DESCRIPTION, QUALITY_DESCRIPTION, Quality


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _options_models() -> dict[str, type[MethodOptions]]:
    # The job kinds' submit code reads these schemas, so their registry is read when a spec is
    # validated, not when this module is imported.
    from app.job.kinds import method_options

    return method_options()


def _kind_trains(method_type: str) -> bool:
    from app.job.kinds import job_kind

    return job_kind(method_type).trains


# One validator of the options of every registered method and job kind, remade when the
# registries change (a method registered at run time is validated like the others).
_method_adapters: dict[tuple[tuple[str, type[MethodOptions]], ...], TypeAdapter[Any]] = {}


def _method_adapter() -> TypeAdapter[Any]:
    models = tuple(_options_models().items())
    adapter = _method_adapters.get(models)
    if adapter is None:
        union: Any = Union[tuple(model for _, model in models)]  # noqa: UP007
        options: Any = Annotated[union, Field(discriminator="type")]
        adapter = TypeAdapter(options)
        _method_adapters.clear()
        _method_adapters[models] = adapter
    return adapter


def _validate_method(value: Any) -> MethodOptions:
    if isinstance(value, MethodOptions):
        return value
    options: MethodOptions = _method_adapter().validate_python(value)
    return options


class _RegisteredOptions:
    """pydantic's schema of `method`: validated as one of the registered options models, told
    apart by `type` and dumped as the one it is; documented as that union."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # No serialization schema: each value is dumped by its own model's serializer.
        return core_schema.no_info_plain_validator_function(_validate_method)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        choices = {
            name: model.__pydantic_core_schema__ for name, model in _options_models().items()
        }
        return handler(core_schema.tagged_union_schema(choices, discriminator="type"))


# A job spec's `method`: the options of a fine-tuning method (app/ml/methods) or of a job kind
# (app/job/kinds), whichever the registries hold, by `type`.
if TYPE_CHECKING:
    Method = MethodOptions
else:
    # FastAPI puts every model a field is annotated with into the OpenAPI document; this field is
    # documented as the union of the registered models (above), so its annotation names none.
    Method = Annotated[
        object,
        _RegisteredOptions(),
        # For plain error messages (app/core/validation.py): the union the value is read as.
        Tagged("type", members=lambda: tuple(_options_models().values())),
    ]


Auto = Literal["auto"]

# epochs "auto": enough passes to see AUTO_EPOCHS_MIN_EXAMPLES training examples on a small set,
# few enough to see at most AUTO_EPOCHS_MAX_EXAMPLES on a large one, 3 in between (as OpenAI's
# n_epochs "auto"), clamped to AUTO_EPOCHS_RANGE.
AUTO_EPOCHS_BASE = 3
AUTO_EPOCHS_MIN_EXAMPLES = 2_000
AUTO_EPOCHS_MAX_EXAMPLES = 100_000
AUTO_EPOCHS_RANGE = (1, 20)


class EarlyStopping(_Strict):
    """Stop when the validation metric stops improving, and keep the best checkpoint."""

    metric: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description='An evaluation metric the task reports (higher is better), or "loss" (the '
        "validation loss, lower is better). Default: the task's primary metric.",
    )
    patience: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Evaluations in a row without improvement after which training stops.",
    )
    threshold: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="How much the metric must beat the best so far to count as an improvement.",
    )


class Hyperparameters(_Strict):
    """Training options; omitted ones take the service's defaults."""

    epochs: Annotated[float, Field(gt=0, le=100)] | Auto = Field(
        default=3.0,
        description='Passes over the training set. "auto": 3, more for a small train set and '
        f"fewer for a large one: ceil({AUTO_EPOCHS_MIN_EXAMPLES:,} / rows) when 3 passes would "
        f"show fewer than {AUTO_EPOCHS_MIN_EXAMPLES:,} examples, "
        f"floor({AUTO_EPOCHS_MAX_EXAMPLES:,} / rows) when they would show more than "
        f"{AUTO_EPOCHS_MAX_EXAMPLES:,}, always {AUTO_EPOCHS_RANGE[0]} to "
        f"{AUTO_EPOCHS_RANGE[1]} (rows: the train rows after any validation split).",
    )
    learning_rate: Annotated[float, Field(gt=0, le=1)] | Auto | None = Field(
        default=None,
        description='Peak learning rate; omitted or "auto": the default of the task and method.',
    )
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto = Field(
        default=32,
        description='Per-device train batch size. "auto": the largest power of two whose '
        "estimated training memory (weights, gradients and Adam state, plus activations at "
        "max_length) fits in 70% of the free GPU memory, at most 128; on CPU, in half the "
        "available RAM, at most 4,096 tokens a batch (32 at 128 tokens) and 64; and never "
        "more than an eighth of the train rows.",
    )
    max_length: Annotated[int, Field(ge=8, le=8192)] | Auto = Field(
        default=128,
        description='Tokens per example (truncated). "auto": the 99th percentile of the '
        "tokenized lengths of up to 2,000 train rows, rounded up to a multiple of 8, capped "
        "by the model's limit.",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Optimizer steps to train for; when given it overrides epochs.",
    )
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="Share of steps warming up.")
    warmup_steps: int | None = Field(
        default=None, ge=0, le=10_000_000, description="Warm-up steps; overrides warmup_ratio."
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=1024, description="Batches whose gradients add up to one step."
    )
    max_grad_norm: float = Field(
        default=1.0, ge=0, le=1000, description="Gradient clipping norm; 0 turns clipping off."
    )
    dropout: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Overrides the probability of every dropout layer of the model while training.",
    )
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Label smoothing (TrainingArguments.label_smoothing_factor): this share of "
        "each target's probability is spread evenly over all labels. Tasks whose training "
        "targets are not labels (extractive QA's start/end positions) refuse a value above 0.",
    )
    early_stopping: EarlyStopping | None = Field(
        default=None,
        description="Evaluate at every checkpoint, stop once the metric has not improved for "
        "`patience` evaluations, and register the best checkpoint with its evaluation. Needs "
        'checkpoints (checkpoint_every "epoch" or N steps, not "no").',
    )
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = Field(
        default="auto",
        description='Mixed-precision training on a CUDA GPU. "auto": bf16 where the GPU '
        'supports it, else "no". bf16 and fp16 are refused where the workers train on CPU.',
    )
    checkpoint_every: Annotated[int, Field(ge=1, le=10_000_000)] | Literal["epoch", "no"] = Field(
        default="epoch",
        description="Save a resumable checkpoint (weights, optimizer, scheduler, RNG) every N "
        'optimizer steps, at the end of each epoch ("epoch"), or never ("no"). A job whose '
        "worker dies resumes from its last complete checkpoint.",
    )
    checkpoints_kept: int = Field(
        default=2,
        ge=1,
        le=100,
        description="How many of the newest checkpoints are kept (with early stopping, the "
        "best one is kept too).",
    )
    validation_split: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Share of the train set held out (stratified, seeded) if no validation set.",
    )


class ResolvedHyperparameters(Hyperparameters):
    """Hyperparameters with every "auto" and default made concrete, as a worker trains them."""

    epochs: float = Field(gt=0, le=100)
    learning_rate: float = Field(gt=0, le=1)
    batch_size: int = Field(ge=1, le=1024)
    max_length: int = Field(ge=8, le=8192)
    mixed_precision: Literal["no", "bf16", "fp16"]


QUEUE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,39}$"
# Data-parallel processes a job may ask for (one machine: at most its GPUs or cores).
MAX_PROCESSES = 16


class Resources(_Strict):
    """Where and how a job runs."""

    queue: str | None = Field(
        default=None,
        pattern=QUEUE_NAME,
        description="The worker queue to run on (workers serve named queues: `tuneserve worker "
        '--queues gpu,training`). Default: "gpu" for a job that needs a CUDA GPU (mixed '
        'precision bf16 or fp16), "training" otherwise.',
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=MAX_PROCESSES,
        description="Data-parallel training processes on one worker machine (torchrun, DDP: gloo "
        "on CPU, NCCL with one GPU per process). Each trains on its own shard of every epoch with "
        "hyperparameters.batch_size rows a step, so a step trains processes x batch_size rows "
        "(the job's resolved effective_batch_size). Training jobs only.",
    )


class ResolvedResources(BaseModel):
    queue: str = TRAINING_QUEUE
    processes: int = 1


def job_resources(spec: dict[str, Any] | None) -> ResolvedResources:
    """Where and how a job runs, as its stored spec says (a job from before resources: the
    defaults)."""
    return ResolvedResources.model_validate((spec or {}).get("resources") or {})


class JobCreate(_Strict):
    """Body of POST /v1/jobs."""

    task: str = Field(description="classification")
    base_model: str = Field(
        min_length=1,
        max_length=300,
        description='An id from /v1/base-models, or "model:<id>" to go on training a registered '
        "model of the same task (its weights, head and labels) on new data, to quantize or "
        "export it (methods quantize, export), or to distil it into a student (method "
        "distill: the teacher).",
    )
    train_dataset: str | None = Field(
        default=None,
        description="The dataset to train on; required except for methods quantize and export, "
        "whose job uses its parent's (where the parent's held-out validation rows come from).",
    )
    validation_dataset: str | None = None
    method: Method = Field(default_factory=FullMethod)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    task_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the task itself (see the task's documentation); defaults filled.",
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _processes_train(self) -> JobCreate:
        if self.resources.processes > 1 and not _kind_trains(self.method.type):
            raise ValueError(
                f"resources.processes: {self.resources.processes} processes train one job; a "
                f"{self.method.type} job does not train (leave processes at 1)"
            )
        return self


WARNINGS_DESCRIPTION = (
    "What the job was accepted despite, in plain words: e.g. a validation dataset that has no "
    "rows of some of the train set's classes, which its metrics then cannot evaluate."
)
JOB_WARNINGS_DESCRIPTION = (
    WARNINGS_DESCRIPTION[:-1] + "; then what its training found that its metrics alone do not "
    "say: a model no better than the task's trivial baseline (or a validation set too small to "
    "tell), a training loss that did not fall, each with what to try."
)


class JobSpec(BaseModel):
    """The resolved spec stored on the job row and read by the worker."""

    method: Method
    hyperparameters: Hyperparameters
    task_options: dict[str, Any] = Field(default_factory=dict)
    seed: int
    resources: ResolvedResources = Field(default_factory=ResolvedResources)
    # Found at submission and kept with the spec, so that every read of the job shows them.
    warnings: list[str] = Field(default_factory=list, description=WARNINGS_DESCRIPTION)


class JobError(BaseModel):
    code: str
    message: str


def percent_done(step: int, total: int) -> float:
    """0-100 to one decimal, rounded down: 100.0 only once every step is done."""
    if total <= 0:
        return 0.0
    return min(100.0, max(0.0, math.floor(1000 * step / total) / 10))


class JobProgress(BaseModel):
    step: int = Field(description="Optimizer steps done.")
    total: int = Field(description="Optimizer steps planned (0 until training starts).")
    epoch: float = Field(description="Epochs done, to 2 decimals.")
    percent: float = Field(
        description="0-100, one decimal; 100 once training has ended (also when it stopped early)."
    )
    elapsed_s: float | None = Field(
        description="Seconds of training so far, including earlier attempts up to the checkpoint "
        "this one resumed from; null until training starts."
    )
    eta_s: float | None = Field(
        description="Estimated seconds of training left, at this attempt's own pace (evaluations "
        "included); null until it has trained a step."
    )
    samples_per_second: float | None = Field(
        description="Training samples per second in this attempt (steps x effective batch size); "
        "null until it has trained a step."
    )

    @classmethod
    def from_row(cls, job: Job) -> JobProgress:
        detail = job.progress_detail or {}
        percent = detail.get("percent")
        return cls(
            step=job.progress_step,
            total=job.progress_total,
            epoch=round(job.epoch, 2),
            percent=(
                percent
                if isinstance(percent, int | float)
                else percent_done(job.progress_step, job.progress_total)
            ),
            elapsed_s=detail.get("elapsed_s"),
            eta_s=detail.get("eta_s"),
            samples_per_second=detail.get("samples_per_second"),
        )


class JobRead(BaseModel):
    id: str
    object: Literal["job"] = "job"
    task: str
    base_model: str
    train_dataset: str
    validation_dataset: str | None
    method: dict[str, Any]
    hyperparameters: dict[str, Any] = Field(
        description='As resolved by the worker once training has started ("auto" values and '
        "defaults made concrete, with the device); until then, as submitted."
    )
    task_options: dict[str, Any]
    seed: int
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Where and how the job runs: its worker queue and training processes.",
    )
    warnings: list[str] = Field(default_factory=list, description=JOB_WARNINGS_DESCRIPTION)
    parameters: ParameterCounts | None = Field(
        default=None, description="Weights of the model as trained; known once training starts."
    )
    status: str
    attempt: int
    progress: JobProgress
    train_loss: float | None
    metrics: dict[str, Any] | None
    baseline_metrics: dict[str, Any] | None = Field(
        default=None, description=BASELINE_DESCRIPTION + " Known once the job has succeeded."
    )
    quality: Quality | None = Field(default=None, description=QUALITY_DESCRIPTION)
    model_id: str | None
    error: JobError | None
    sweep_id: str | None = Field(default=None, description="The sweep this job is a trial of.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, job: Job) -> JobRead:
        spec = job.spec or {}
        error = (
            JobError(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None
        )
        return cls(
            id=job.id,
            task=job.task,
            base_model=job.base_model,
            train_dataset=job.train_dataset_id,
            validation_dataset=job.validation_dataset_id,
            method=spec.get("method", {}),
            hyperparameters=job.resolved_hyperparameters or spec.get("hyperparameters", {}),
            task_options=spec.get("task_options", {}),
            seed=spec.get("seed", 0),
            resources=job_resources(spec).model_dump(),
            warnings=[*(spec.get("warnings") or []), *(job.training_warnings or [])],
            parameters=ParameterCounts.model_validate(job.parameters) if job.parameters else None,
            status=job.status,
            attempt=job.attempt,
            progress=JobProgress.from_row(job),
            train_loss=job.train_loss,
            metrics=job.metrics,
            baseline_metrics=job.baseline_metrics,
            quality=Quality(job.quality) if job.quality else None,
            model_id=job.model_id,
            error=error,
            sweep_id=job.sweep_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobEventRead(BaseModel):
    id: int
    type: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class CheckpointRead(BaseModel):
    """A complete, resumable checkpoint of a job that has not ended."""

    step: int = Field(description="Optimizer steps done when it was saved.")
    epoch: float
    metrics: dict[str, float] = Field(description="The latest evaluation before it was saved.")
    size_bytes: int
    saved_at: datetime
