"""The runtime interface: a padded batch of features in, the model's outputs out.

A task turns a request into feature rows (token ids, unpadded) and turns each row's outputs
back into answers; everything between belongs here and to the batcher: rows sorted by length,
cut into chunks (`plan_chunks`), padded, run through a `ModelRunner`, and each row's outputs
handed back without its padding. Runners wrap torch modules (fp32, int8, adapters on a shared
base) and ONNX Runtime sessions alike, so the tasks never see which one answered.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# One model input row: token ids and their companions (attention mask, token types), unpadded.
FeatureRow = Mapping[str, Sequence[int]]
# One row's outputs (e.g. `logits`), without the padding the batch had.
RowOutputs = dict[str, np.ndarray]
Forward = Callable[[dict[str, np.ndarray], list[str | None]], Mapping[str, np.ndarray]]

# What one more model call costs, in padded tokens' worth of model time (all-MiniLM-L6-v2 on CPU,
# measured with SST-2 sentences: a call's fixed cost is about that of 24 tokens). Cutting a sorted
# batch where the padding saved exceeds it makes the batch cheaper.
CHUNK_OVERHEAD_TOKENS = 24


@dataclass
class ModelRunner:
    """How to run one executable model.

    `forward(batch, adapters)` takes a padded batch (int64 arrays by input name) where
    `adapters[i]` names row i's adapter (None for a plain model) and returns the outputs by name,
    batch first. `runtime` names what runs it (torch, torch_int8, onnx, onnx_int8); `group` is
    what calls must share to run in one batch (the base model); `sequence_outputs` says whether
    the outputs have a token dimension, which is cut back to each row's length.
    """

    group: Hashable
    label: str
    runtime: str
    sequence_outputs: bool
    pad_values: Mapping[str, int]
    forward: Forward
    # Whether rows of different adapters may share one forward (LoRA's per-row adapters).
    mixed_adapters: bool = False
    # Whether two model threads may run this group's forward at the same time.
    concurrent: bool = True
    # The most rows one forward may take (None: the caller's limit); see MAX_ROWS_PER_RUN.
    max_rows: int | None = None


def plan_chunks(
    lengths: list[int],
    *,
    max_tokens: int,
    max_rows: int,
    overhead: int = CHUNK_OVERHEAD_TOKENS,
) -> list[tuple[int, int]]:
    """Cut rows sorted by length (shortest first) into chunks `[start, end)`.

    A chunk costs its rows times its longest row (the padded tokens) plus `overhead`; the plan is
    the cheapest of all cuts (dynamic programming over the cut points) in which every chunk has at
    most `max_rows` rows and `max_tokens` padded tokens (a row longer than that runs alone).
    """
    n = len(lengths)
    best = [0] + [0] * n  # best[j]: the cheapest plan of rows [0, j)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]
        best_cost, best_start = -1, end - 1
        for start in range(end - 1, max(-1, end - 1 - max_rows), -1):
            rows = end - start
            if rows > 1 and rows * width > max_tokens:
                break
            cost = best[start] + rows * width + overhead
            if best_cost < 0 or cost <= best_cost:  # ties: the longer chunk
                best_cost, best_start = cost, start
        best[end], cut[end] = best_cost, best_start
    chunks: list[tuple[int, int]] = []
    end = n
    while end > 0:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]


def row_length(row: FeatureRow) -> int:
    return len(next(iter(row.values())))


def pad_rows(rows: Sequence[FeatureRow], pad_values: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The rows as one int64 array per input, padded on the right to the longest."""
    width = max(row_length(r) for r in rows)
    batch: dict[str, np.ndarray] = {}
    for name in rows[0]:
        array = np.full((len(rows), width), pad_values.get(name, 0), dtype=np.int64)
        for i, row in enumerate(rows):
            values = row[name]
            array[i, : len(values)] = values
        batch[name] = array
    return batch


def run_rows(
    runner: ModelRunner,
    rows: Sequence[FeatureRow],
    adapters: Sequence[str | None],
    *,
    max_tokens: int,
    max_rows: int,
    overhead: int = CHUNK_OVERHEAD_TOKENS,
    observe_batch: Callable[[int], None] | None = None,
) -> list[RowOutputs]:
    """Every row's outputs, in the order given: rows sorted by length, cut by `plan_chunks`,
    each chunk padded to its longest row and run in one forward."""
    order = sorted(range(len(rows)), key=lambda i: row_length(rows[i]))
    lengths = [row_length(rows[i]) for i in order]
    results: list[RowOutputs] = [{} for _ in rows]
    if runner.max_rows is not None:
        max_rows = min(max_rows, runner.max_rows)
    for start, end in plan_chunks(
        lengths, max_tokens=max_tokens, max_rows=max_rows, overhead=overhead
    ):
        chunk = order[start:end]
        outputs = runner.forward(
            pad_rows([rows[i] for i in chunk], runner.pad_values), [adapters[i] for i in chunk]
        )
        if observe_batch is not None:
            observe_batch(len(chunk))
        for name, value in outputs.items():
            for position, i in enumerate(chunk):
                row = value[position]
                # Token-level outputs lose the padding positions: one entry per real token.
                results[i][name] = (
                    row[: lengths[start + position]] if runner.sequence_outputs else row
                )
    return results


def torch_forward(
    model: torch.nn.Module, *, call: Callable[[dict[str, torch.Tensor], list[str | None]], Any]
) -> Forward:
    """A runner's forward for a torch module: arrays to tensors on the model's device, `call`
    under inference mode (the one place serving enters it), tensor outputs back as float32."""
    import torch

    device = getattr(model, "device", None)

    def forward(batch: dict[str, np.ndarray], adapters: list[str | None]) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        if device is not None and str(device) != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        with torch.inference_mode():
            out = call(tensors, adapters)
        return {
            k: v.detach().float().cpu().numpy()
            for k, v in out.items()
            if isinstance(v, torch.Tensor)
        }

    return forward
