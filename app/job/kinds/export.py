"""Export jobs: a registered model as an ONNX graph for ONNX Runtime, evaluated beside it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.job.kinds.derived import DerivingKind
from app.ml.methods import MethodOptions


class ExportMethod(MethodOptions):
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


class Export(DerivingKind):
    name = "export"
    options_model = ExportMethod
