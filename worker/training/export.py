"""Export a registered model (method export) to ONNX and evaluate it beside its parent.

The parent's fp32 weights (adapters merged) are evaluated on its validation rows by the Trainer
evaluation that training uses, exported (worker/training/onnx_export.py), optimized, quantized
to int8 when asked, and the graph is evaluated by ONNX Runtime on the same features, in the same
order, with the task's compute_metrics. Only then is it registered (artifact onnx or onnx_int8):
its directory holds the graph, the tokenizer and the metadata, and loads without its parent.
The exported graph computes no loss, so the export's metrics have no eval_loss.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.db.models import Model
from app.job.checkpoints import job_dir
from app.job.kinds.export import ExportMethod
from app.ml.lineage import base_metadata
from app.ml.loading import quiet_transformers
from app.ml.runtimes import MAX_ROWS_PER_RUN, ONNX, ONNX_FILE, ONNX_INT8
from app.predict.onnx import onnx_session
from worker.training import baseline as baselines
from worker.training import data as training_data
from worker.training import onnx_export
from worker.training.artifacts import WrittenModel, library_versions, write_model_dir
from worker.training.evaluation import EvalProgress, Evaluation, eval_args, evaluate
from worker.training.freezing import count_parameters
from worker.training.quantize import (
    Prepared,
    datasets_metadata,
    derived_row,
    log_evaluation,
    metric_deltas,
    number,
    prepare,
)
from worker.training.state import AttemptFence


def _export(p: Prepared, directory: Path, method: ExportMethod) -> dict[str, Any]:
    """Write the optimized (and maybe quantized) graph to directory/model.onnx; what was done."""
    import torch

    task = p.inputs.task
    names = training_data.model_input_columns(p.fp32) & set(p.tokenizer.model_input_names)
    collator = training_data.make_collator(task, p.tokenizer)
    first: list[Any] = [
        {k: v for k, v in p.features[i].items() if k in names}
        for i in range(min(2, len(p.features)))
    ]
    sample = {k: v for k, v in collator(first).items() if isinstance(v, torch.Tensor)}
    exported = directory / "exported.onnx"
    started = time.perf_counter()
    outputs = onnx_export.export_graph(p.fp32, sample, exported, per_token=task.per_token_outputs)
    fused = onnx_export.optimize_graph(exported, p.fp32.config)
    target = directory / ONNX_FILE
    if method.quantization == "int8":
        onnx_export.quantize_graph(exported, target)
        exported.unlink()
    else:
        exported.rename(target)
    return {
        "format": "onnx",
        "opset": onnx_export.OPSET,
        "inputs": sorted(sample),
        "outputs": outputs,
        "fused_operators": fused,
        "quantization": method.quantization,
        "export_seconds": round(time.perf_counter() - started, 3),
        "bytes": target.stat().st_size,
    }


def _evaluate_graph(
    p: Prepared, graph: Path, compute_metrics: Any, progress: EvalProgress, *, batch_size: int
) -> Evaluation:
    """ONNX Runtime's evaluation of the graph on the features the parent was evaluated on, in
    batches of `batch_size` rows (as /predict will run it)."""
    from transformers.trainer_utils import EvalPrediction, denumpify_detensorize
    from transformers.utils.generic import find_labels

    session: Any = onnx_session(graph, threads=p.threads)
    collator = training_data.make_collator(p.inputs.task, p.tokenizer)
    label_names: list[str] = find_labels(type(p.fp32))  # type: ignore[no-untyped-call]

    # One batch first, untimed, as the parent's evaluation warms up.
    warm = collator([p.features[i] for i in range(min(batch_size, len(p.features)))])
    session.run(None, {i.name: warm[i.name].numpy() for i in session.get_inputs()})
    started = time.perf_counter()
    predictions, labels = onnx_export.onnx_predictions(
        session,
        p.features,
        collator=collator,
        batch_size=batch_size,
        label_names=label_names,
        on_batch=progress.advance,
    )
    metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    seconds = time.perf_counter() - started
    return Evaluation(
        # Plain numbers, as the Trainer's evaluation gives them.
        metrics=denumpify_detensorize(metrics),  # type: ignore[no-untyped-call]
        seconds=round(seconds, 3),
        samples_per_second=round(p.rows.num_rows / max(seconds, 1e-9), 2),
    )


def export_job(
    settings: Settings, fence: AttemptFence, *, model_id: str
) -> tuple[Model, WrittenModel]:
    """Export the claimed job's parent to ONNX, evaluate both, write models/<model_id> (graph,
    tokenizer, metadata); returns the Model row, not inserted."""
    quiet_transformers()
    method = ExportMethod.model_validate((fence.job().spec or {}).get("method") or {})
    artifact = ONNX_INT8 if method.quantization == "int8" else ONNX
    p = prepare(settings, fence, target=artifact)
    task, setup = p.inputs.task, p.setup
    parameters = {"trainable": 0, "total": count_parameters(p.fp32)[1]}
    resolved = {
        "format": method.format,
        "quantization": method.quantization,
        "opset": onnx_export.OPSET,
        "max_length": setup.max_length,
        "batch_size": setup.batch_size,
        "device": "cpu",
        "threads": p.threads,
    }
    fence.training_started(hyperparameters=resolved, parameters=parameters)
    fence.log(f"export settings: {resolved}", **resolved)
    # The graph runs as /predict will run it: ONNX int8 a row at a time (MAX_ROWS_PER_RUN).
    graph_batch = min(setup.batch_size, MAX_ROWS_PER_RUN.get(artifact, setup.batch_size))
    batches = math.ceil(len(p.features) / setup.batch_size)
    batches += math.ceil(len(p.features) / graph_batch)
    progress = EvalProgress(fence, total=batches, poll_seconds=settings.cancel_poll_seconds)
    compute_metrics = task.compute_metrics(
        setup.label_names, options=setup.options, eval_rows=p.rows, eval_features=p.features
    )
    primary = task.primary_metric
    parent = evaluate(
        p.fp32,
        args=eval_args(
            setup, output_dir=job_dir(settings, p.inputs.job.id), seed=p.inputs.spec.seed
        ),
        features=p.features,
        rows=p.rows,
        collator=training_data.make_collator(task, p.tokenizer),
        tokenizer=p.tokenizer,
        compute_metrics=compute_metrics,
        progress=progress,
    )
    recorded = (p.parent_meta.get("metrics") or {}).get(primary)
    log_evaluation(fence, "fp32", parent, primary, {f"parent_recorded_{primary}": recorded})
    fence.raise_if_cancelled()

    work = job_dir(settings, p.inputs.job.id) / "onnx"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        export = _export(p, work, method)
        fence.log(
            f"exported to ONNX (opset {export['opset']}, {artifact}) in "
            f"{export['export_seconds']} s: {export['bytes']} bytes; fused "
            f"{export['fused_operators'] or 'nothing (generic passes at load)'}",
            **export,
        )
        graph = work / ONNX_FILE
        ev = _evaluate_graph(p, graph, compute_metrics, progress, batch_size=graph_batch)
        log_evaluation(fence, artifact, ev, primary, {})
        speedup = round(parent.seconds / max(ev.seconds, 1e-9), 3)
        summary = {
            "primary_metric": primary,
            artifact: ev.metrics.get(primary),
            "fp32": parent.metrics.get(primary),
            "delta": metric_deltas(ev.metrics, parent.metrics),
            "speedup": speedup,
            "validation_rows": p.rows.num_rows,
        }
        fence.log(
            f"{artifact} vs fp32 torch: {primary} {number(summary[artifact])} vs "
            f"{number(summary['fp32'])}; evaluation at {speedup}x the torch speed",
            **summary,
        )
        fence.raise_if_cancelled()
        judgement = baselines.judge(
            fence, task, metrics=ev.metrics, baseline=p.baseline, rows=p.rows.num_rows
        )
        meta = _metadata(
            p,
            model_id=model_id,
            artifact=artifact,
            export=export,
            parent=parent,
            exported=ev,
            judgement=judgement,
            parameters=parameters,
        )
        tokenizer = p.tokenizer

        def save(directory: Path) -> None:
            shutil.copyfile(graph, directory / ONNX_FILE)
            tokenizer.save_pretrained(str(directory))

        written = write_model_dir(settings, model_id=model_id, save=save, meta=meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = derived_row(
        p,
        model_id=model_id,
        method="export",
        artifact=artifact,
        metrics=ev.metrics,
        parent_metrics=parent.metrics,
        judgement=judgement,
        written=written,
        parameters=parameters,
    )
    return row, written


def _metadata(
    p: Prepared,
    *,
    model_id: str,
    artifact: str,
    export: dict[str, Any],
    parent: Evaluation,
    exported: Evaluation,
    judgement: baselines.Judgement,
    parameters: dict[str, int],
) -> dict[str, Any]:
    inputs = p.inputs
    assert inputs.base.lineage is not None
    return {
        "model_id": model_id,
        "job_id": inputs.job.id,
        "task": inputs.task.name,
        "artifact": artifact,
        "label_names": p.setup.label_names,
        # The weights came from here; the graph holds them (no parent needed to load it).
        "base_model": base_metadata(inputs.base),
        "method": inputs.spec.method.model_dump(mode="json"),
        "export": {
            **export,
            "parent": {
                "id": inputs.base.lineage.parent_id,
                "artifact": p.parent_meta.get("artifact", "full"),
            },
        },
        "hyperparameters": p.parent_meta.get("hyperparameters") or {},
        "task_options": p.setup.options.model_dump(mode="json"),
        "max_length": p.setup.max_length,
        "seed": inputs.spec.seed,
        "metrics": exported.metrics,
        "parent_metrics": parent.metrics,
        "baseline_metrics": judgement.baseline_metrics,
        "quality": judgement.quality,
        "primary_metric": inputs.task.primary_metric,
        "evaluation": {
            "fp32": {"seconds": parent.seconds, "samples_per_second": parent.samples_per_second},
            artifact: {
                "seconds": exported.seconds,
                "samples_per_second": exported.samples_per_second,
            },
            "device": "cpu",
            "threads": p.threads,
        },
        **datasets_metadata(p),
        "parameters": parameters,
        "versions": library_versions(),
    }
