"""Hyperparameters made concrete when training starts: "auto" values and mixed precision.

The rules are documented on the Hyperparameters fields (app/job/schemas.py); the resolved values
are written to the job row, and a later attempt of the same job reuses them, so that it resumes
a checkpoint with the batch size and schedule the checkpoint was made with.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.errors import InvalidInput
from app.job.controls import UNSUPPORTED_PRECISION, default_learning_rate, resolve_controls
from app.job.schemas import (
    AUTO_EPOCHS_BASE,
    AUTO_EPOCHS_MAX_EXAMPLES,
    AUTO_EPOCHS_MIN_EXAMPLES,
    AUTO_EPOCHS_RANGE,
    Hyperparameters,
    ResolvedHyperparameters,
)
from app.ml import device as devices
from app.ml.tasks import TaskSpec

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase

AUTO = "auto"
# max_length "auto": this percentile of the tokenized lengths of at most this many train rows.
LENGTH_SAMPLE_ROWS = 2_000
LENGTH_PERCENTILE = 0.99
LENGTH_MULTIPLE = 8
# batch_size "auto": the share of free memory training may plan to use, the largest batch, and
# on CPU the tokens a batch may hold (32 x 128, the service's default batch).
GPU_MEMORY_SHARE = 0.7
CPU_MEMORY_SHARE = 0.5
GPU_MAX_BATCH = 128
CPU_MAX_BATCH = 64
CPU_BATCH_TOKENS = 4_096
# Batches an epoch has at least, so that a small train set still takes several steps.
MIN_BATCHES_PER_EPOCH = 8
# Adam in fp32 keeps, per trainable weight, a gradient and two moments (12 bytes) beside the
# weight itself (4 bytes, every weight, frozen or not).
WEIGHT_BYTES = 4
TRAINABLE_EXTRA_BYTES = 12


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs to know about the model being trained."""

    layers: int
    hidden: int
    heads: int
    trainable: int
    total: int

    @classmethod
    def of(cls, config: Any, *, trainable: int, total: int) -> ModelShape:
        hidden = int(getattr(config, "hidden_size", 0) or 768)
        return cls(
            layers=int(getattr(config, "num_hidden_layers", 0) or 12),
            hidden=hidden,
            heads=int(getattr(config, "num_attention_heads", 0) or max(1, hidden // 64)),
            trainable=trainable,
            total=total,
        )


def resolve_epochs(train_rows: int) -> float:
    """Passes over `train_rows` rows: 3, or more/fewer to see a sensible number of examples."""
    low, high = AUTO_EPOCHS_RANGE
    rows = max(1, train_rows)
    if rows * AUTO_EPOCHS_BASE < AUTO_EPOCHS_MIN_EXAMPLES:
        return float(min(high, math.ceil(AUTO_EPOCHS_MIN_EXAMPLES / rows)))
    if rows * AUTO_EPOCHS_BASE > AUTO_EPOCHS_MAX_EXAMPLES:
        return float(max(low, AUTO_EPOCHS_MAX_EXAMPLES // rows))
    return float(AUTO_EPOCHS_BASE)


def sample_lengths(
    rows: datasets.Dataset,
    encode: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
    *,
    length_of: str,
    seed: int,
) -> list[int]:
    """Tokenized lengths of the features of at most LENGTH_SAMPLE_ROWS rows (a seeded sample)."""
    count = min(rows.num_rows, LENGTH_SAMPLE_ROWS)
    picked = sorted(random.Random(seed).sample(range(rows.num_rows), count))
    features = encode(rows.select(picked)[:])
    return [len(x) for x in features[length_of]]


def resolve_max_length(lengths: Sequence[int], *, limit: int) -> int:
    """The LENGTH_PERCENTILE length, rounded up to a multiple of 8, at most `limit`."""
    if not lengths:
        return limit
    ordered = sorted(lengths)
    high = ordered[max(0, math.ceil(LENGTH_PERCENTILE * len(ordered)) - 1)]
    rounded = LENGTH_MULTIPLE * math.ceil(max(high, 1) / LENGTH_MULTIPLE)
    return min(rounded, limit)


def example_bytes(shape: ModelShape, *, max_length: int, precision: str) -> float:
    """Activation memory one example of `max_length` tokens keeps for the backward pass.

    Per transformer layer s*h*(34 + 5*a*s/h) bytes with 16-bit activations (Korthikanti et al.,
    "Reducing Activation Recomputation in Large Transformer Models", 2022: s tokens, h hidden
    size, a attention heads); twice that in fp32.
    """
    s, h, a = max_length, shape.hidden, shape.heads
    per_layer = s * h * (34 + 5 * a * s / h)
    return shape.layers * per_layer * (1 if precision in ("bf16", "fp16") else 2)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of the GPU, or the memory available to processes on this machine."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def resolve_batch_size(
    shape: ModelShape,
    *,
    max_length: int,
    precision: str,
    device_type: str,
    free_bytes: int,
    train_rows: int,
) -> int:
    """The largest power of two that fits the memory and the caps of the device."""
    gpu = device_type == "cuda"
    share = GPU_MEMORY_SHARE if gpu else CPU_MEMORY_SHARE
    fixed = shape.total * WEIGHT_BYTES + shape.trainable * TRAINABLE_EXTRA_BYTES
    per_example = example_bytes(shape, max_length=max_length, precision=precision)
    caps = [
        int((free_bytes * share - fixed) // per_example),
        GPU_MAX_BATCH if gpu else CPU_MAX_BATCH,
        max(1, train_rows // MIN_BATCHES_PER_EPOCH),
    ]
    if not gpu:
        caps.append(CPU_BATCH_TOKENS // max_length)
    largest = max(1, min(caps))
    return 1 << (largest.bit_length() - 1)


def resolve_precision(requested: str, device: torch.device) -> str:
    """The mixed precision to train with; InvalidInput (unsupported_precision) where it cannot."""
    if requested == AUTO:
        return "bf16" if devices.bf16_supported(device) else "no"
    problem = devices.precision_problem(requested, device)
    if problem is not None:
        raise InvalidInput(
            f"hyperparameters.mixed_precision: {problem}",
            field="hyperparameters.mixed_precision",
            code=UNSUPPORTED_PRECISION,
        )
    return requested


@dataclass
class AutoInputs:
    """What the "auto" rules read, gathered by the runner."""

    task: TaskSpec
    method: str
    train_rows: int
    # Resolved by an earlier attempt of the job (None on the first).
    previous: dict[str, Any] | None
    device: torch.device
    # The most tokens the tokenizer and the position embeddings allow.
    length_limit: int
    # Data-parallel processes training the job (on CPU they share the machine's memory).
    processes: int = 1


def resolve(
    hp: Hyperparameters,
    given: AutoInputs,
    *,
    max_length: Callable[[], int],
    batch_size: Callable[[int, str], int],
) -> ResolvedHyperparameters:
    """Every "auto" (and an omitted learning rate) made concrete.

    `max_length` and `batch_size` compute those two lazily (tokenizing a sample, estimating
    memory), only when they are "auto" and an earlier attempt has not already resolved them.
    max_length comes back capped at the model's limit, whatever was asked.
    """
    previous = given.previous or {}

    def earlier(name: str) -> Any:
        return previous.get(name)

    hp = resolve_controls(hp, given.task)  # the early-stopping metric, when left out
    precision = resolve_precision(hp.mixed_precision, given.device)
    # A str here is always "auto".
    epochs = (
        float(earlier("epochs") or resolve_epochs(given.train_rows))
        if isinstance(hp.epochs, str)
        else hp.epochs
    )
    rate = (
        float(earlier("learning_rate") or default_learning_rate(given.task, given.method))
        if hp.learning_rate is None or isinstance(hp.learning_rate, str)
        else hp.learning_rate
    )
    length = (
        int(earlier("max_length") or max_length())
        if isinstance(hp.max_length, str)
        else hp.max_length
    )
    length = min(length, given.length_limit)
    batch = (
        int(earlier("batch_size") or batch_size(length, precision))
        if isinstance(hp.batch_size, str)
        else hp.batch_size
    )
    return ResolvedHyperparameters.model_validate(
        {
            **hp.model_dump(),
            "epochs": epochs,
            "learning_rate": rate,
            "max_length": length,
            "batch_size": batch,
            "mixed_precision": precision,
        }
    )


def resolve_for_training(
    hp: Hyperparameters,
    given: AutoInputs,
    *,
    train: datasets.Dataset,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    config: Any,
    encoder: Callable[[int, bool], Any],
    parameters: dict[str, int],
) -> ResolvedHyperparameters:
    """resolve() for a job about to train: max_length from a sample of its train rows (encoded
    by the task at the model's limit), batch_size from the model's shape and free memory."""

    def max_length() -> int:
        lengths = sample_lengths(
            train,
            encoder(given.length_limit, False),
            length_of=tokenizer.model_input_names[0],
            seed=seed,
        )
        return resolve_max_length(lengths, limit=given.length_limit)

    def batch_size(length: int, precision: str) -> int:
        return resolve_batch_size(
            ModelShape.of(config, **parameters),
            max_length=length,
            precision=precision,
            device_type=given.device.type,
            # A GPU per process; on CPU the processes share the machine's memory.
            free_bytes=free_memory_bytes(given.device)
            // (1 if given.device.type == "cuda" else given.processes),
            # Each process trains on its shard of the rows.
            train_rows=given.train_rows // given.processes,
        )

    return resolve(hp, given, max_length=max_length, batch_size=batch_size)
