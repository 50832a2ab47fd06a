"""The rules that resolve "auto" hyperparameters, and mixed precision, in the worker."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.errors import InvalidInput
from app.job.schemas import Hyperparameters
from app.ml.tasks import get_task
from worker.training import auto

MINILM = auto.ModelShape(layers=6, hidden=384, heads=12, trainable=22_700_000, total=22_700_000)
GIB = 1024**3


@pytest.mark.parametrize(
    ("rows", "epochs"),
    [(10, 20), (36, 20), (400, 5), (667, 3), (1_000, 3), (4_000, 3), (40_000, 2), (67_349, 1)],
)
def test_epochs_follow_the_train_set_size(rows: int, epochs: int) -> None:
    assert auto.resolve_epochs(rows) == epochs


def test_max_length_is_a_high_percentile_rounded_to_8_and_capped() -> None:
    lengths = [10] * 98 + [30, 200]  # the one outlier does not set the length
    assert auto.resolve_max_length(lengths, limit=512) == 32
    assert auto.resolve_max_length(lengths, limit=24) == 24
    assert auto.resolve_max_length([9], limit=512) == 16
    assert auto.resolve_max_length([], limit=64) == 64


def batch(**kw: Any) -> int:
    values: dict[str, Any] = {
        "max_length": 128,
        "precision": "no",
        "device_type": "cpu",
        "free_bytes": 8 * GIB,
        "train_rows": 4_000,
    }
    return auto.resolve_batch_size(MINILM, **{**values, **kw})


def test_batch_size_from_memory_tokens_and_rows() -> None:
    # CPU: 4,096 tokens a batch binds first (memory would allow ~120 examples).
    assert batch() == 32
    assert batch(max_length=384) == 8
    # A large GPU: the cap; a small one: what fits beside the weights and Adam's state.
    assert batch(device_type="cuda", precision="bf16", free_bytes=80 * GIB) == 128
    assert batch(device_type="cuda", precision="bf16", free_bytes=GIB, max_length=512) == 2
    # fp32 activations take twice the memory of bf16 ones.
    small = {"device_type": "cuda", "free_bytes": 2 * GIB, "max_length": 512}
    assert batch(precision="no", **small) < batch(precision="bf16", **small)
    # At least 8 batches an epoch; never below 1.
    assert batch(train_rows=20) == 2
    assert batch(device_type="cuda", free_bytes=1) == 1


def test_precision_is_refused_where_the_device_lacks_it() -> None:
    import torch

    cpu = torch.device("cpu")
    assert auto.resolve_precision("auto", cpu) == "no"
    assert auto.resolve_precision("no", cpu) == "no"
    for precision in ("bf16", "fp16"):
        with pytest.raises(InvalidInput) as info:
            auto.resolve_precision(precision, cpu)
        assert info.value.code == "unsupported_precision"
        assert "hyperparameters.mixed_precision" in info.value.message
        assert "trains on cpu" in info.value.message


def given(previous: dict[str, Any] | None = None) -> auto.AutoInputs:
    import torch

    return auto.AutoInputs(
        task=get_task("ner"),
        method="full",
        train_rows=36,
        previous=previous,
        device=torch.device("cpu"),
        length_limit=64,
    )


def test_resolve_fills_every_auto_and_reuses_an_earlier_attempts_values() -> None:
    hp = Hyperparameters(epochs="auto", learning_rate="auto", batch_size="auto", max_length="auto")
    asked: list[tuple[int, str]] = []

    def batch_size(length: int, precision: str) -> int:
        asked.append((length, precision))
        return 4

    first = auto.resolve(hp, given(), max_length=lambda: 40, batch_size=batch_size)
    assert (first.epochs, first.batch_size, first.max_length) == (20, 4, 40)
    assert first.learning_rate == 2e-4  # NER's default for full fine-tuning
    assert first.mixed_precision == "no" and asked == [(40, "no")]

    # A later attempt resumes with what the first resolved, whatever memory it sees now.
    previous = {"epochs": 5.0, "learning_rate": 3e-4, "batch_size": 16, "max_length": 48}
    again = auto.resolve(hp, given(previous), max_length=lambda: 8, batch_size=batch_size)
    assert (again.epochs, again.learning_rate, again.batch_size, again.max_length) == (
        5.0,
        3e-4,
        16,
        48,
    )
    assert len(asked) == 1

    # Values that were asked for are kept (max_length capped at the model's limit).
    fixed = Hyperparameters(epochs=2, learning_rate=1e-3, batch_size=8, max_length=512)
    plain = auto.resolve(fixed, given(previous), max_length=lambda: 8, batch_size=batch_size)
    assert (plain.epochs, plain.learning_rate, plain.batch_size, plain.max_length) == (
        2,
        1e-3,
        8,
        64,
    )


def test_early_stopping_metric_defaults_to_the_tasks_primary_metric() -> None:
    hp = Hyperparameters(early_stopping={"patience": 1})  # type: ignore[arg-type]
    resolved = auto.resolve(hp, given(), max_length=lambda: 8, batch_size=lambda n, p: 1)
    assert resolved.early_stopping is not None and resolved.early_stopping.metric == "f1"
