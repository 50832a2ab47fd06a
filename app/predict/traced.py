"""fp32 torch models served from a TorchScript trace on the CPU: the same kernels, without a
Python call per module (about a third of a lone row's time for all-MiniLM-L6-v2, a tenth at four
rows) and without holding the GIL between them.

A trace records the operations one sample ran, so a model whose forward branched on its inputs'
values would answer differently for other inputs. The trace is therefore checked against the
model on batches unlike its sample (a lone unpadded row, pairs of segments, other lengths), and
serving keeps the eager model when tracing fails or any output differs by more than `TOLERANCE`.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import TYPE_CHECKING, Any

from app.predict.runtime import Forward, torch_forward

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("tuneserve.predict")

TOLERANCE = 1e-4
# Sample batches: the trace's, padded (rows of three lengths), then the checks'.
_TEXT = "the film was a quiet and warm story of two friends in paris"


def _batches(tokenizer: PreTrainedTokenizerBase) -> list[dict[str, torch.Tensor]]:
    def encode(texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            texts, pairs, padding=True, truncation=True, max_length=32, return_tensors="pt"
        )
        return dict(enc)

    words = _TEXT.split()
    phrase = [" ".join(words[:n]) for n in (3, 9, 6, 12, 1)]
    return [
        encode(phrase[:3]),  # the trace's sample: padded rows
        encode(phrase[4:5]),  # one row, no padding
        encode(phrase[1:5], phrase[:4]),  # pairs of segments, other lengths
    ]


def _same(a: Any, b: Any) -> bool:
    import torch

    keys = [k for k, v in b.items() if isinstance(v, torch.Tensor)]
    return all(
        k in a and a[k].shape == b[k].shape and float((a[k] - b[k]).abs().max()) <= TOLERANCE
        for k in keys
    )


def traced_forward(model: Any, tokenizer: PreTrainedTokenizerBase) -> Forward | None:
    """A runner forward that runs a checked TorchScript trace of `model`; None (serve the eager
    model) for a model off the CPU, a peft wrapper, or a trace that fails or answers otherwise."""
    import torch

    if str(getattr(model, "device", "cpu")) != "cpu" or type(model).__module__.startswith("peft"):
        return None
    try:
        batches = _batches(tokenizer)
        sample = batches[0]
        # Positional inputs in forward's order, as the trace takes them.
        names = [n for n in inspect.signature(model.forward).parameters if n in sample]
        with torch.inference_mode(), warnings.catch_warnings():
            # TracerWarnings name the value-dependent branches the checks below are for.
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(
                torch.jit.trace(  # type: ignore[no-untyped-call]
                    model, tuple(sample[n] for n in names), strict=False
                )
            )
            for batch in batches:
                inputs = {n: batch[n] for n in names if n in batch}
                if inputs.keys() != set(names) or not _same(
                    traced(*[inputs[n] for n in names]), model(**inputs)
                ):
                    log.info(
                        "%s: its trace answers otherwise; serving it eagerly", type(model).__name__
                    )
                    return None
    except Exception as exc:  # any failure to trace: the eager model answers
        log.info("%s: not traced (%s); serving it eagerly", type(model).__name__, exc)
        return None

    def call(batch: dict[str, torch.Tensor], _adapters: list[str | None]) -> Any:
        return traced(*[batch[n] for n in names])

    return torch_forward(model, call=call)
