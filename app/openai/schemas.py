"""OpenAI's fine-tuning objects as the official SDK sends and reads them, and Tuneserve's extras."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]
# OpenAI's limits on metadata: 16 pairs, keys up to 64 characters, values up to 512. NUL is
# refused: PostgreSQL cannot store or compare it.
MAX_METADATA_PAIRS = 16
NO_NUL = r"^[^\x00]*$"
MetadataKey = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
MetadataValue = Annotated[str, Field(max_length=512, pattern=NO_NUL)]
Metadata = dict[MetadataKey, MetadataValue]
ObjectId = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="The request field at fault, when one is.")
    code: str | None = Field(description="Tuneserve's machine-readable error code.")


class OpenAIErrorResponse(BaseModel):
    """Every error of the /openai/v1 routes, in OpenAI's shape."""

    error: OpenAIErrorBody


# --- files ----------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


# --- fine-tuning jobs ------------------------------------------------------------------------


class HyperparametersIn(BaseModel):
    """OpenAI's three hyperparameters; any other key is one of Tuneserve's own (max_length,
    warmup_ratio, early_stopping, ... as in POST /v1/jobs) and is passed on as it is."""

    model_config = ConfigDict(extra="allow")

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto | None = Field(
        default=None,
        description='Passes over the training set; "auto": Tuneserve\'s epochs "auto"; '
        "omitted: the task's default.",
    )
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto | None = Field(
        default=None,
        description='Rows per step; "auto": Tuneserve\'s batch_size "auto"; omitted: the '
        "task's default.",
    )
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=1000)] | Auto | None = Field(
        default=None,
        description="Multiplies the default learning rate of the task and method (the product "
        'must be at most 1); "auto" or omitted: that default.',
    )


class FineTuningJobCreate(BaseModel):
    """Body of POST /openai/v1/fine_tuning/jobs: OpenAI's fields, and Tuneserve's extras (`task`,
    `task_options`, a Tuneserve `method`), which the SDK sends with `extra_body`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        max_length=300,
        pattern=NO_NUL,
        description="A base model id (GET /openai/v1/models, owned_by 'tuneserve') or a "
        "registered model's id or alias, whose training goes on.",
    )
    training_file: ObjectId = Field(
        description="A file id from POST /openai/v1/files (or a Tuneserve dataset id)."
    )
    validation_file: ObjectId | None = None
    hyperparameters: HyperparametersIn | None = Field(
        default=None,
        description="OpenAI's older place for the hyperparameters; use method.supervised.",
    )
    method: dict[str, Any] | None = Field(
        default=None,
        description='{"type": "supervised", "supervised": {"hyperparameters": {...}}}, or a '
        'Tuneserve method as in POST /v1/jobs (e.g. {"type": "lora", "r": 16}) with the '
        "hyperparameters in `hyperparameters`.",
    )
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=NO_NUL)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    metadata: Metadata | None = Field(
        default=None, max_length=MAX_METADATA_PAIRS, description="Up to 16 string pairs."
    )
    integrations: list[dict[str, Any]] | None = Field(
        default=None, max_length=16, description="Ignored: the server makes no outbound calls."
    )
    task: str | None = Field(
        default=None,
        max_length=40,
        description="Tuneserve extra: the task to train (classification, ner, qa). Default: a "
        "registered model's task, else classification.",
    )
    task_options: dict[str, Any] | None = Field(
        default=None, description="Tuneserve extra: the task's options, as in POST /v1/jobs."
    )


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: HyperparametersIn | None = None


class SupervisedMethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"]
    supervised: SupervisedIn | None = None


class HyperparametersOut(BaseModel):
    n_epochs: int | float | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None


class SupervisedOut(BaseModel):
    hyperparameters: HyperparametersOut


class MethodOut(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedOut


class JobErrorOut(BaseModel):
    code: str
    message: str
    param: str | None = None


class TuneserveJobFacts(BaseModel):
    """What Tuneserve adds to OpenAI's job object."""

    task: str
    method: dict[str, Any] = Field(description="The Tuneserve method that trains (full, lora...).")
    hyperparameters: dict[str, Any] = Field(description="Tuneserve's own, as in GET /v1/jobs.")
    train_dataset: str
    validation_dataset: str | None
    suffix: str | None
    metrics: dict[str, Any] | None
    warnings: list[str]
    progress_percent: float


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None
    fine_tuned_model: str | None = Field(
        description="The registered model's id once the job succeeded: POST /v1/predict/<task> "
        "takes it as `model`."
    )
    finished_at: int | None
    hyperparameters: HyperparametersOut
    model: str
    organization_id: str = Field(description="The tenant.")
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None
    method: MethodOut
    tuneserve: TuneserveJobFacts


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventOut]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None


class CheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(
        description="The registered model (servable) for the job's final checkpoint; "
        "'<job id>:checkpoint-<step>' (resumable, not servable) for one of a running job."
    )
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointOut]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# --- models ---------------------------------------------------------------------------------


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="'tuneserve' for a base model, else the tenant.")
    task: str | None = Field(default=None, description="A registered model's task (/predict).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
