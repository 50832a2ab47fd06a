"""Serving an ONNX export with ONNX Runtime: a session whose run is the runner's forward."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.ml.runtimes import MAX_ROWS_PER_RUN, ONNX_FILE
from app.predict.runtime import ModelRunner

if TYPE_CHECKING:
    from app.ml.tasks import TaskSpec


def onnx_session(path: Path, *, threads: int) -> object:
    """An ONNX Runtime CPU session of `path` with `threads` threads for one run (the model
    threads, each running one batch, are the parallelism across runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The export was optimized for this model family already; ORT's own passes add the rest.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(
    directory: Path,
    *,
    label: str,
    task: TaskSpec,
    pad_values: Mapping[str, int],
    runtime: str,
    threads: int,
) -> tuple[ModelRunner, int]:
    """The runner of an ONNX model directory, and the bytes of its graph file."""
    graph = directory / ONNX_FILE
    session = onnx_session(graph, threads=threads)
    inputs = [i.name for i in session.get_inputs()]  # type: ignore[attr-defined]
    outputs = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]

    def forward(batch: dict[str, np.ndarray], _adapters: list[str | None]) -> dict[str, np.ndarray]:
        feed = {name: batch[name] for name in inputs if name in batch}
        values = session.run(outputs, feed)  # type: ignore[attr-defined]
        return {
            name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)
        }

    runner = ModelRunner(
        group=("onnx", id(session)),
        label=label,
        runtime=runtime,
        sequence_outputs=task.per_token_outputs,
        pad_values=pad_values,
        forward=forward,
        max_rows=MAX_ROWS_PER_RUN.get(runtime),
    )
    return runner, graph.stat().st_size
