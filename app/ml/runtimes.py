"""Which runtime serves each kind of model artifact (Models.artifact)."""

from __future__ import annotations

from app.ml.quantize import INT8_DYNAMIC

# ONNX exports (an export job's models): the graph, optimized, in fp32 or with int8 weights.
ONNX = "onnx"
ONNX_INT8 = "onnx_int8"
ONNX_ARTIFACTS = frozenset({ONNX, ONNX_INT8})
# The graph file inside an ONNX model's directory, beside the tokenizer and the metadata.
ONNX_FILE = "model.onnx"

_RUNTIMES = {
    "full": "torch",
    "adapter": "torch",
    INT8_DYNAMIC: "torch_int8",
    ONNX: "onnx",
    ONNX_INT8: "onnx_int8",
}


# The most rows one forward of a runtime may take (others: the batcher's limit). ONNX Runtime's
# dynamic int8 quantizes a run's activations with one scale over the whole batch, padding
# included, so a row's neighbours would move its scores (SST-2 dev accuracy moved by up to 0.6
# points with the batching alone); run a row at a time, its answers are its own and match the
# export job's evaluation. Batching buys that runtime little on the CPU: 1 row a run made 266
# rows/s against 287 in length-sorted batches of 32 (all-MiniLM-L6-v2, one thread).
MAX_ROWS_PER_RUN: dict[str, int] = {ONNX_INT8: 1}


def runtime_of(artifact: str) -> str:
    """torch (fp32 weights, adapters merged or on a shared base), torch_int8 (dynamic int8),
    onnx or onnx_int8 (ONNX Runtime)."""
    return _RUNTIMES.get(artifact, "torch")
