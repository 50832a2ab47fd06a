"""Job spec and job schemas. Option names follow peft's configs and TrainingArguments."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from app.core.queue import TRAINING_QUEUE
from app.core.schemas import ParameterCounts
from app.db.models import Job
from app.job.distill import DistillMethod
from app.ml.quality import BASELINE_DESCRIPTION, QUALITY_DESCRIPTION, Quality

# Learning rates that worked for all-MiniLM-sized encoders here (the task head trains with the
# pooler under every method); the resolved value is stored. Swept with
# benchmarks/method_defaults.py on SST-2 (1,500 train rows, 2 epochs, batch 32, 300 dev rows,
# dev accuracy, seed 0; README "Method defaults against the baseline"). NER and QA set their own.
DEFAULT_LEARNING_RATE = {
    # 2e-4 beat 1e-4 and 3e-4 on each of 3 seeds (SST-2, 2,000 rows x 2 epochs, batch 32).
    "full": 2e-4,
    "lora": 2e-3,  # 1e-3 0.743, 2e-3 0.790, 4e-3 0.767
    "head_only": 3e-3,  # 1e-3 0.650, 3e-3 0.677, 1e-2 0.663: a linear layer wants a high rate
    "ia3": 1e-2,  # 3e-3 (before the pooler trained) 0.52, 1e-2 0.757, 3e-2 0.697
    "adalora": 1e-2,  # 1e-3 (before the pooler trained) 0.49, 1e-2 0.737, 3e-2 0.710
    "prefix_tuning": 1e-2,  # 1e-2 0.713, 3e-2 0.683
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
        description="Scaling numerator (alpha/init_r, as peft computes it); default 4 * init_r.",
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


class QuantizeMethod(_Strict):
    """Quantize a registered model (base_model "model:<id>") for lean CPU serving; nothing trains.

    The job evaluates the parent (fp32, adapters merged) and its quantized copy on the parent's
    validation rows (or on validation_dataset) with the task's own evaluation, and registers the
    quantized model with both results: `metrics` (quantized) and `parent_metrics` (the parent).
    It takes no training fields: hyperparameters, task_options and seed keep their defaults."""

    type: Literal["quantize"]
    scheme: Literal["int8_dynamic"] = Field(
        default="int8_dynamic",
        description="int8_dynamic: every nn.Linear gets int8 weights (one scale per tensor) and "
        "quantizes its input per batch at run time (torch's quantize_dynamic); embeddings and "
        "layer norms stay fp32. Served on the CPU.",
    )


class ExportMethod(_Strict):
    """Export a registered model (base_model "model:<id>") for ONNX Runtime; nothing trains.

    The parent (adapters merged) is exported to ONNX, its graph optimized with ONNX Runtime's
    transformer fusions, its weights quantized to int8 when asked; the export and the parent are
    evaluated on the parent's validation rows (or on validation_dataset), and the export is
    registered (artifact onnx or onnx_int8) with both results: `metrics` (the export) and
    `parent_metrics`. It takes no training fields."""

    type: Literal["export"]
    format: Literal["onnx"] = Field(default="onnx", description="onnx: an ONNX graph (opset 17).")
    quantization: Literal["none", "int8"] = Field(
        default="none",
        description="none: fp32 weights; int8: every MatMul's weights int8 (one scale per "
        "tensor), activations quantized per batch at run time (ONNX Runtime's dynamic "
        "quantization).",
    )


# Methods that derive a serving artifact from a registered model instead of training one.
DerivedMethod = QuantizeMethod | ExportMethod

Method = Annotated[
    FullMethod
    | LoraMethod
    | Ia3Method
    | AdaLoraMethod
    | PrefixTuningMethod
    | HeadOnlyMethod
    | QuantizeMethod
    | ExportMethod
    | DistillMethod,
    Field(discriminator="type"),
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
        if self.resources.processes > 1 and isinstance(self.method, DerivedMethod):
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
