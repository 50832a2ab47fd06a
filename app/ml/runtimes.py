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


def runtime_of(artifact: str) -> str:
    """torch (fp32 weights, adapters merged or on a shared base), torch_int8 (dynamic int8),
    onnx or onnx_int8 (ONNX Runtime)."""
    return _RUNTIMES.get(artifact, "torch")
