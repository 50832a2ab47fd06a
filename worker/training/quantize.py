"""Quantize a registered model (method quantize): evaluate it and its int8 copy side by side.

The parent's fp32 weights (adapters merged) and their dynamic int8 quantization are evaluated on
the same validation rows, tokenized as the parent was (its max_length, task options and batch
size), by the Trainer evaluation and the task's compute_metrics that training uses. The new model
is registered with the int8 metrics and the fp32 ones as its parent's (`parent_metrics`), beside
the task's trivial baseline on the same rows and its own verdict; its directory holds only
its metadata and tokenizer, and serving quantizes the parent again (app/ml/quantize.py).
Both evaluations run on the CPU, where the quantized kernels run, with the worker's threads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.core.errors import ServiceError
from app.core.store import get_store
from app.db.models import Model
from app.job.checkpoints import job_dir
from app.ml import device as devices
from app.ml.lineage import base_metadata, load_base_model
from app.ml.loading import load_tokenizer, quiet_transformers, read_model_metadata
from app.ml.quantize import INT8_DYNAMIC, quantize_int8_dynamic, quantized_linear_count
from worker.training import baseline as baselines
from worker.training import data as training_data
from worker.training.artifacts import WrittenModel, library_versions, write_model_dir
from worker.training.evaluation import (
    EvalProgress,
    EvalSetup,
    Evaluation,
    eval_args,
    eval_setup,
    evaluate,
    evaluation_rows,
    headline,
)
from worker.training.freezing import count_parameters
from worker.training.runner import JobInputs, read_job_inputs
from worker.training.state import AttemptFence

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass
class Prepared:
    """The job's inputs, the parent's metadata and the evaluation it is compared on."""

    inputs: JobInputs
    parent_meta: dict[str, Any]
    setup: EvalSetup
    rows: datasets.Dataset
    kind: str
    baseline: dict[str, float]
    tokenizer: PreTrainedTokenizerBase
    fp32: torch.nn.Module
    features: datasets.Dataset
    threads: int


@dataclass
class Comparison:
    parent: Evaluation
    quantized: Evaluation
    layers: int
    quantize_seconds: float

    @property
    def speedup(self) -> float:
        return round(self.parent.seconds / max(self.quantized.seconds, 1e-9), 3)


def prepare(settings: Settings, fence: AttemptFence, *, target: str) -> Prepared:
    """Read the job and its parent, draw the validation rows, load the fp32 parent, tokenize
    (for a quantize or export job; `target` names what the parent becomes, for the log)."""
    threads = devices.thread_count(settings.training_threads)
    devices.set_torch_threads(threads)
    inputs = read_job_inputs(settings, fence)
    lineage = inputs.base.lineage
    if lineage is None:  # submission checks it; a row written by hand may not
        raise ServiceError(
            f"method {inputs.spec.method.type} needs base_model model:<id>, not '{inputs.base.id}'",
            code="invalid_input",
        )
    parent_dir = get_store(settings).local(lineage.parent_storage_path)
    parent_meta = read_model_metadata(parent_dir)
    task = inputs.task
    setup = eval_setup(task, parent_meta, list(lineage.label_names))
    fence.raise_if_cancelled()
    rows, train, kind = evaluation_rows(settings, inputs, parent_meta)
    source = "validation dataset" if kind == "given" else f"{kind} split of train set, as before"
    fence.log(
        f"{inputs.spec.method.type} {inputs.base.id} to {target}: {rows.num_rows} validation "
        f"rows ({source})",
        validation_rows=rows.num_rows,
        validation=kind,
    )
    # On the parent's own rows this is the parent's baseline again: the same train and
    # validation rows, the same labels.
    baseline = baselines.task_baseline(
        fence, task, train, rows, label_names=setup.label_names, options=setup.options
    )
    tokenizer = load_tokenizer(parent_dir)
    fp32 = load_base_model(task, inputs.base, label_names=setup.label_names)
    encode = task.preprocess(
        tokenizer,
        label2id={name: i for i, name in enumerate(setup.label_names)},
        max_length=setup.max_length,
        options=setup.options,
        for_eval=True,
    )
    features = training_data.tokenize(
        rows,
        encode,
        keep=training_data.model_input_columns(fp32) | set(task.eval_only_columns),
        length_of=tokenizer.model_input_names[0],
    )
    return Prepared(
        inputs, parent_meta, setup, rows, kind, baseline, tokenizer, fp32, features, threads
    )


def _compare(settings: Settings, fence: AttemptFence, p: Prepared) -> Comparison:
    """Evaluate the fp32 parent, quantize it, evaluate the int8 copy; each logged as it ends."""
    task, setup = p.inputs.task, p.setup
    batches = math.ceil(len(p.features) / setup.batch_size)
    progress = EvalProgress(fence, total=2 * batches, poll_seconds=settings.cancel_poll_seconds)
    output_dir = job_dir(settings, p.inputs.job.id)
    common: dict[str, Any] = {
        "args": eval_args(setup, output_dir=output_dir, seed=p.inputs.spec.seed),
        "features": p.features,
        "rows": p.rows,
        "collator": training_data.make_collator(task, p.tokenizer),
        "tokenizer": p.tokenizer,
        "compute_metrics": task.compute_metrics(
            setup.label_names, options=setup.options, eval_rows=p.rows, eval_features=p.features
        ),
        "progress": progress,
    }
    primary = task.primary_metric
    parent = evaluate(p.fp32, **common)
    recorded = (p.parent_meta.get("metrics") or {}).get(primary)
    log_evaluation(fence, "fp32", parent, primary, {f"parent_recorded_{primary}": recorded})

    started = time.perf_counter()
    int8 = quantize_int8_dynamic(p.fp32)
    quantize_seconds = round(time.perf_counter() - started, 3)
    layers = quantized_linear_count(int8)
    fence.log(
        f"{layers} Linear layers quantized to int8 in {quantize_seconds} s",
        quantized_layers=layers,
        quantize_seconds=quantize_seconds,
    )
    quantized = evaluate(int8, **common)
    log_evaluation(fence, "int8", quantized, primary, {})
    result = Comparison(parent, quantized, layers, quantize_seconds)
    summary = {
        "primary_metric": primary,
        "int8": quantized.metrics.get(primary),
        "fp32": parent.metrics.get(primary),
        "delta": metric_deltas(quantized.metrics, parent.metrics),
        "int8_samples_per_second": quantized.samples_per_second,
        "fp32_samples_per_second": parent.samples_per_second,
        "speedup": result.speedup,
        "validation_rows": p.rows.num_rows,
        "torch_threads": p.threads,
    }
    fence.log(
        f"int8 vs fp32: {primary} {number(summary['int8'])} vs {number(summary['fp32'])}; "
        f"int8 evaluation at {result.speedup}x the fp32 speed",
        **summary,
    )
    return result


def metric_deltas(int8: dict[str, Any], fp32: dict[str, Any]) -> dict[str, float]:
    """int8 minus fp32 for every scalar metric both report."""
    return {
        k: round(float(v) - float(fp32[k]), 6)
        for k, v in int8.items()
        if isinstance(v, int | float) and isinstance(fp32.get(k), int | float)
    }


def log_evaluation(
    fence: AttemptFence, precision: str, ev: Evaluation, primary: str, extra: dict[str, Any]
) -> None:
    fence.metrics(
        f"{precision} evaluation: {headline(ev.metrics, primary)}; "
        f"{ev.samples_per_second} samples/s",
        {
            "kind": "eval",
            "precision": precision,
            **ev.metrics,
            "seconds": ev.seconds,
            "samples_per_second": ev.samples_per_second,
            **extra,
        },
    )


def number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


def quantize_job(
    settings: Settings, fence: AttemptFence, *, model_id: str
) -> tuple[Model, WrittenModel]:
    """Quantize the claimed job's parent, evaluate both, write models/<model_id> (metadata and
    tokenizer only); returns the Model row, not inserted."""
    quiet_transformers()
    p = prepare(settings, fence, target=INT8_DYNAMIC)
    parameters = {"trainable": 0, "total": count_parameters(p.fp32)[1]}
    resolved = {
        "scheme": INT8_DYNAMIC,
        "max_length": p.setup.max_length,
        "batch_size": p.setup.batch_size,
        "label_smoothing": p.setup.label_smoothing,
        "device": "cpu",
        "torch_threads": p.threads,
    }
    fence.training_started(hyperparameters=resolved, parameters=parameters)
    fence.log(f"evaluation settings: {resolved}", **resolved)
    result = _compare(settings, fence, p)
    fence.raise_if_cancelled()
    # Its own verdict: the int8 metrics against the baseline (nothing trained, no loss to check).
    judgement = baselines.judge(
        fence,
        p.inputs.task,
        metrics=result.quantized.metrics,
        baseline=p.baseline,
        rows=p.rows.num_rows,
    )

    meta = _metadata(
        p, model_id=model_id, result=result, judgement=judgement, parameters=parameters
    )
    tokenizer = p.tokenizer

    def save(directory: Path) -> None:
        # No weights and no config.json: the parent's weights are quantized at every load.
        tokenizer.save_pretrained(str(directory))

    written = write_model_dir(settings, model_id=model_id, save=save, meta=meta)
    row = derived_row(
        p,
        model_id=model_id,
        method="quantize",
        artifact=INT8_DYNAMIC,
        metrics=result.quantized.metrics,
        parent_metrics=result.parent.metrics,
        judgement=judgement,
        written=written,
        parameters=parameters,
    )
    return row, written


def derived_row(
    p: Prepared,
    *,
    model_id: str,
    method: str,
    artifact: str,
    metrics: dict[str, Any],
    parent_metrics: dict[str, Any],
    judgement: baselines.Judgement,
    written: WrittenModel,
    parameters: dict[str, int],
) -> Model:
    """The Model row of a model derived from the job's parent (quantized, exported), not
    inserted: the parent's task, labels, datasets and hyperparameters, its own artifact."""
    inputs = p.inputs
    return Model(
        id=model_id,
        tenant_id=inputs.job.tenant_id,
        task=inputs.task.name,
        base_model=inputs.base.id,
        method=method,
        label_names=p.setup.label_names,
        metrics=metrics,
        parent_metrics=parent_metrics,
        baseline_metrics=judgement.baseline_metrics,
        quality=judgement.quality,
        job_id=inputs.job.id,
        train_dataset_id=inputs.train_row.id,
        validation_dataset_id=inputs.validation_row.id if inputs.validation_row else None,
        # The weights were trained with the parent's; max_length is what it serves with.
        hyperparameters=p.parent_meta.get("hyperparameters") or {},
        storage_path=written.storage_path,
        size_bytes=written.size_bytes,
        artifact=artifact,
        parent_model_id=inputs.base.parent_model_id,
        parameters=parameters,
    )


def _metadata(
    p: Prepared,
    *,
    model_id: str,
    result: Comparison,
    judgement: baselines.Judgement,
    parameters: dict[str, int],
) -> dict[str, Any]:
    import torch

    inputs = p.inputs
    assert inputs.base.lineage is not None
    timing = {
        "seconds": result.parent.seconds,
        "samples_per_second": result.parent.samples_per_second,
    }
    return {
        "model_id": model_id,
        "job_id": inputs.job.id,
        "task": inputs.task.name,
        "artifact": INT8_DYNAMIC,
        "label_names": p.setup.label_names,
        # Where the weights are: the parent, rebuilt as a base (adapters merged) when loaded.
        "base_model": base_metadata(inputs.base),
        "head_weights": p.parent_meta.get("head_weights") or [],
        "method": inputs.spec.method.model_dump(mode="json"),
        "quantization": {
            "scheme": INT8_DYNAMIC,
            "modules": ["torch.nn.Linear"],
            "dtype": "qint8",
            "quantized_layers": result.layers,
            "engine": torch.backends.quantized.engine,
            "parent": {
                "id": inputs.base.lineage.parent_id,
                "storage_path": inputs.base.lineage.parent_storage_path,
                "artifact": p.parent_meta.get("artifact", "full"),
                "files": p.parent_meta.get("files") or {},
            },
        },
        "hyperparameters": p.parent_meta.get("hyperparameters") or {},
        "task_options": p.setup.options.model_dump(mode="json"),
        "max_length": p.setup.max_length,
        "seed": inputs.spec.seed,
        "metrics": result.quantized.metrics,
        "parent_metrics": result.parent.metrics,
        "baseline_metrics": judgement.baseline_metrics,
        "quality": judgement.quality,
        "primary_metric": inputs.task.primary_metric,
        "evaluation": {
            "fp32": timing,
            "int8": {
                "seconds": result.quantized.seconds,
                "samples_per_second": result.quantized.samples_per_second,
            },
            "speedup": result.speedup,
            "quantize_seconds": result.quantize_seconds,
            "device": "cpu",
            "torch_threads": p.threads,
        },
        **datasets_metadata(p),
        "parameters": parameters,
        "versions": library_versions(),
    }


def datasets_metadata(p: Prepared) -> dict[str, Any]:
    """The train and validation datasets of a derived model's metadata: its parent's train set,
    and the rows both were evaluated on."""
    inputs, val_row = p.inputs, p.inputs.validation_row
    return {
        "train_dataset": {"id": inputs.train_row.id, "sha256": inputs.train_row.sha256},
        "validation_dataset": {
            "id": val_row.id if val_row else None,
            "sha256": val_row.sha256 if val_row else None,
            "rows_used": p.rows.num_rows,
            "kind": p.kind,
        },
    }
