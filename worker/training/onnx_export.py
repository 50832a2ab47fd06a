"""From a torch model to an optimized (and, when asked, int8) ONNX graph, and its evaluation.

The graph is exported with torch.onnx's TorchScript exporter (opset 17; batch and sequence
dimensions dynamic) from the model with eager attention, whose attention pattern ONNX Runtime's
transformer optimizer recognizes and fuses (with SDPA attention it fuses only the layer norms and
GELUs). The optimizer then fuses embeddings, attention, GELU and skip layer norms for the model
families it knows (BERT and its relatives); other families get ONNX Runtime's generic passes at
load. int8 is ONNX Runtime's dynamic quantization: int8 weights, one scale per output channel,
for every MatMul and attention; activations quantized per run at run time, which is why /predict
runs such a graph a row at a time (app/ml/runtimes.py MAX_ROWS_PER_RUN). Per-channel weights halved
the top-label changes against fp32 on SST-2 dev (37 to 18 of 872, one row a run) at 3% of the speed;
static quantization calibrated on training rows kept answers batch-independent too but ran no
faster than fp32 here (its QDQ MatMuls did not become int8 kernels).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import datasets
    import torch

OPSET = 17
# config.model_type -> the model type ONNX Runtime's transformer optimizer fuses.
OPTIMIZER_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilbert": "bert",
    "electra": "bert",
    "mpnet": "bert",
}


def output_names(model: torch.nn.Module, sample: dict[str, torch.Tensor]) -> list[str]:
    """The names of the model's tensor outputs (logits, or start_logits and end_logits)."""
    import torch

    with torch.inference_mode():
        out = model(**sample)
    return [k for k, v in out.items() if isinstance(v, torch.Tensor) and k != "loss"]


def export_graph(
    model: Any, sample: dict[str, torch.Tensor], path: Path, *, per_token: bool
) -> list[str]:
    """Write `model` as an ONNX graph at `path`; the graph's output names. `per_token`: the
    outputs have a token dimension (the task's per_token_outputs), dynamic like the inputs'."""
    import inspect

    import torch

    # Eager attention: the pattern the optimizer fuses (numerically the same model).
    model.set_attn_implementation("eager")
    model.eval()
    # The exporter orders the graph's inputs as forward's parameters, and input_names names them
    # in that order (the tokenizer's order may differ: token_type_ids before attention_mask).
    inputs = [name for name in inspect.signature(model.forward).parameters if name in sample]
    sample = {name: sample[name] for name in inputs}
    outputs = output_names(model, sample)
    dynamic: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in inputs}
    for name in outputs:
        dynamic[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter announces the dynamo one; its graphs fuse better today.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (),
            str(path),
            kwargs=dict(sample),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    return outputs


def optimize_graph(path: Path, config: Any) -> dict[str, int]:
    """Fuse the graph at `path` in place with ONNX Runtime's transformer optimizer when it knows
    the model family; the fused operators by kind (empty when it does not)."""
    from onnxruntime.transformers import optimizer

    model_type = OPTIMIZER_MODEL_TYPES.get(str(getattr(config, "model_type", "")))
    if model_type is None:
        return {}
    optimized = optimizer.optimize_model(
        str(path),
        model_type=model_type,
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=None,
    )
    optimized.save_model_to_file(str(path), use_external_data_format=False)
    fused = optimized.get_fused_operator_statistics()
    return {k: int(v) for k, v in fused.items() if v}


def quantize_graph(source: Path, target: Path) -> None:
    """int8 weights (per output channel) for every MatMul and fused Attention of `source`,
    written to `target`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # Fused operators (com.microsoft) defeat shape inference; their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def onnx_predictions(
    session: Any,
    features: datasets.Dataset,
    *,
    collator: Callable[[list[Any]], Any],
    batch_size: int,
    label_names: Sequence[str],
    on_batch: Callable[[], None],
) -> tuple[Any, Any]:
    """The session's outputs and the labels of `features` in dataset order, batched, padded and
    concatenated as the Trainer's evaluation does (padding -100), for the task's compute_metrics.
    """
    from transformers.trainer_pt_utils import nested_concat

    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    predictions: Any = None
    labels: Any = None
    for start in range(0, len(features), batch_size):
        batch = collator(
            [features[i] for i in range(start, min(start + batch_size, len(features)))]
        )
        feed = {name: batch[name].numpy().astype(np.int64) for name in inputs}
        values = [np.asarray(v, dtype=np.float32) for v in session.run(outputs, feed)]
        step = values[0] if len(values) == 1 else tuple(values)
        gold = tuple(batch[name].numpy() for name in label_names if name in batch)
        step_labels = gold[0] if len(gold) == 1 else (gold or None)
        predictions = step if predictions is None else nested_concat(predictions, step, -100)  # type: ignore[no-untyped-call]
        if step_labels is not None:
            labels = step_labels if labels is None else nested_concat(labels, step_labels, -100)  # type: ignore[no-untyped-call]
        on_batch()
    return predictions, labels
