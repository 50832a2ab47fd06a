"""Job spec and job schemas. Option names follow peft's configs and TrainingArguments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from app.db.models import Job

# Learning rates that worked for all-MiniLM-sized encoders here; the resolved value is stored.
# adalora and prefix_tuning are untuned: LoRA's rate for AdaLoRA (the same kind of update), and
# for prefix tuning the 1e-2 of peft's and P-tuning v2's examples.
DEFAULT_LEARNING_RATE = {
    "full": 1e-4,
    "lora": 1e-3,
    "head_only": 1e-3,
    "ia3": 3e-3,
    "adalora": 1e-3,
    "prefix_tuning": 1e-2,
}
# Methods that train a peft adapter (saved as an adapter unless merged at registration).
ADAPTER_METHODS = frozenset({"lora", "ia3", "adalora", "prefix_tuning"})


MERGE_DESCRIPTION = (
    "Fold the trained adapter into the base weights when the model is registered: a full model "
    "directory (artifact 'merged') that needs no peft to load, at the size of the base model. "
    "Otherwise the adapter is saved alone (artifact 'adapter') and merged when it is loaded."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FullMethod(_Strict):
    """Every weight trains, or with `train_top_layers` only the task head and the top layers."""

    type: Literal["full"] = "full"
    train_top_layers: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Train only the task head and the top N transformer layers; the embeddings "
        "and the layers below stay frozen. Omitted: every layer trains.",
    )


class Ia3Method(_Strict):
    """(IA)^3 (peft.IA3Config): learned rescaling vectors, far fewer weights than LoRA; the task
    head trains with them and is saved beside them."""

    type: Literal["ia3"]
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Module names to rescale; found from the architecture when omitted.",
    )
    feedforward_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Which of target_modules are feed-forward layers (their inputs are scaled); "
        "found from the architecture when omitted.",
    )
    merge_adapter: bool = Field(default=False, description=MERGE_DESCRIPTION)


class HeadOnlyMethod(_Strict):
    """Only the new task head trains; the pretrained model is frozen (a linear probe)."""

    type: Literal["head_only"]


class LoraMethod(_Strict):
    """LoRA adapters (peft.LoraConfig); the task head trains with them and is saved beside them."""

    type: Literal["lora"]
    r: int = Field(default=8, ge=1, le=512, description="Rank of the update matrices.")
    lora_alpha: float | None = Field(
        default=None, gt=0, le=4096, description="Scaling numerator (alpha/r); default 2 * r."
    )
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Module names to adapt; found from the architecture when omitted.",
    )
    merge_adapter: bool = Field(default=False, description=MERGE_DESCRIPTION)


class AdaLoraMethod(_Strict):
    """AdaLoRA (peft.AdaLoraConfig): LoRA whose rank budget moves, while training, to the matrices
    that matter most; the task head trains with it and is saved beside it.

    Every adapted matrix starts at rank `init_r`. After `tinit` warm-up steps the total budget
    shrinks (cubically) until `tfinal` steps before the end, where it reaches an average of
    `target_r` per matrix; the last `tfinal` steps train the final ranks."""

    type: Literal["adalora"]
    init_r: int = Field(default=12, ge=1, le=512, description="Rank every matrix starts with.")
    target_r: int = Field(
        default=8,
        ge=1,
        le=512,
        description="Average rank per matrix left at the end; less than init_r.",
    )
    lora_alpha: float | None = Field(
        default=None,
        gt=0,
        le=4096,
        description="Scaling numerator (alpha/init_r, as peft computes it); default 2 * init_r.",
    )
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Module names to adapt; found from the architecture when omitted.",
    )
    tinit: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Optimizer steps at the start that train every rank before any is pruned; "
        "default a tenth of the job's steps.",
    )
    tfinal: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Optimizer steps at the end that train the final ranks; default a fifth of "
        "the job's steps. tinit + tfinal must leave steps to reallocate ranks in.",
    )
    delta_t: int = Field(
        default=1,
        ge=1,
        le=10_000_000,
        # peft calls it deltaT; either spelling is accepted.
        validation_alias=AliasChoices("delta_t", "deltaT"),
        description="Steps between two reallocations of the budget (peft's deltaT).",
    )
    orth_reg_weight: float = Field(
        default=0.5,
        ge=0,
        le=100,
        description="Weight of the loss term that keeps the singular vectors orthogonal.",
    )
    merge_adapter: bool = Field(default=False, description=MERGE_DESCRIPTION)

    @model_validator(mode="after")
    def _budget_shrinks(self) -> AdaLoraMethod:
        # peft's allocator prunes init_r - target_r ranks per matrix; with none to prune its
        # threshold search (kthvalue with k = 0) fails at the first reallocation.
        if self.target_r >= self.init_r:
            raise ValueError(
                f"target_r ({self.target_r}) must be less than init_r ({self.init_r}): AdaLoRA "
                "prunes ranks from init_r down to target_r (for a fixed rank, use lora)"
            )
        return self


class PrefixTuningMethod(_Strict):
    """Prefix tuning (peft.PrefixTuningConfig): trained key/value vectors that every attention
    layer attends to before the input; the task head trains with them and is saved beside them.
    The prefix cannot be folded into the weights: the model is served as base + prefix, and the
    prefix takes num_virtual_tokens of the base model's positions."""

    type: Literal["prefix_tuning"]
    num_virtual_tokens: int = Field(
        default=20, ge=1, le=512, description="Length of the trained prefix, in tokens."
    )
    prefix_projection: bool = Field(
        default=False,
        description="Train the prefix through a two-layer MLP (more stable, more weights while "
        "training; the saved prefix is the MLP's output either way).",
    )
    encoder_hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="Hidden size of that MLP; only with prefix_projection. Default: the base "
        "model's hidden size.",
    )

    @model_validator(mode="after")
    def _projection_size(self) -> PrefixTuningMethod:
        if self.encoder_hidden_size is not None and not self.prefix_projection:
            raise ValueError("encoder_hidden_size is only used with prefix_projection: true")
        return self


Method = Annotated[
    FullMethod | LoraMethod | Ia3Method | AdaLoraMethod | PrefixTuningMethod | HeadOnlyMethod,
    Field(discriminator="type"),
]


class Hyperparameters(_Strict):
    """Training options; omitted ones take the service's defaults."""

    epochs: float = Field(default=3, gt=0, le=100, description="Passes over the training set.")
    learning_rate: float | None = Field(
        default=None, gt=0, le=1, description="Peak learning rate; default depends on the method."
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="Per-device train batch size.")
    max_length: int = Field(
        default=128, ge=8, le=8192, description="Tokens per example (truncated)."
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
    checkpoint_every: Annotated[int, Field(ge=1, le=10_000_000)] | Literal["epoch", "no"] = Field(
        default="epoch",
        description="Save a resumable checkpoint (weights, optimizer, scheduler, RNG) every N "
        'optimizer steps, at the end of each epoch ("epoch"), or never ("no"). A job whose '
        "worker dies resumes from its last complete checkpoint.",
    )
    checkpoints_kept: int = Field(
        default=2, ge=1, le=100, description="How many of the newest checkpoints are kept."
    )
    validation_split: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Share of the train set held out (stratified, seeded) if no validation set.",
    )


class JobCreate(_Strict):
    """Body of POST /v1/jobs."""

    task: str = Field(description="classification")
    base_model: str = Field(min_length=1, max_length=300, description="An id from /v1/base-models.")
    train_dataset: str
    validation_dataset: str | None = None
    method: Method = Field(default_factory=FullMethod)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    task_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the task itself (see the task's documentation); defaults filled.",
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1)


class JobSpec(BaseModel):
    """The resolved spec stored on the job row and read by the worker."""

    method: Method
    hyperparameters: Hyperparameters
    task_options: dict[str, Any] = Field(default_factory=dict)
    seed: int


class JobError(BaseModel):
    code: str
    message: str


class JobProgress(BaseModel):
    step: int
    total: int
    epoch: float


class JobRead(BaseModel):
    id: str
    object: Literal["job"] = "job"
    task: str
    base_model: str
    train_dataset: str
    validation_dataset: str | None
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    task_options: dict[str, Any]
    seed: int
    status: str
    attempt: int
    progress: JobProgress
    train_loss: float | None
    metrics: dict[str, Any] | None
    model_id: str | None
    error: JobError | None
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
            hyperparameters=spec.get("hyperparameters", {}),
            task_options=spec.get("task_options", {}),
            seed=spec.get("seed", 0),
            status=job.status,
            attempt=job.attempt,
            progress=JobProgress(step=job.progress_step, total=job.progress_total, epoch=job.epoch),
            train_loss=job.train_loss,
            metrics=job.metrics,
            model_id=job.model_id,
            error=error,
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
