"""fp32 torch models are served from a checked TorchScript trace: same answers as the eager model
on any batch, and the eager model whenever the trace would answer otherwise."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.ml.loading import load_model, load_tokenizer
from app.ml.tasks import get_task
from app.ml.tasks.serving import feature_rows
from app.predict.predictor import plain_runner
from app.predict.runtime import run_rows
from app.predict.traced import traced_forward
from tests.tinymodel import NEGATIVE, NEUTRAL, POSITIVE, build_tiny_model_dir

LABELS = {"classification": ["neg", "pos"], "ner": ["O", "B-PER", "I-PER", "B-LOC"], "qa": []}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.mark.parametrize("task_name", ["classification", "ner", "qa"])
def test_the_trace_answers_as_the_model_on_batches_unlike_its_sample(
    tiny_dir: Path, task_name: str
) -> None:
    task = get_task(task_name)
    model = load_model(task, tiny_dir, label_names=LABELS[task_name])
    tokenizer = load_tokenizer(tiny_dir)
    forward = traced_forward(model, tokenizer)
    assert forward is not None
    rng = random.Random(3)
    words = POSITIVE + NEGATIVE + NEUTRAL
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 50))) for _ in range(40)]
    pairs = [" ".join(rng.choices(words, k=rng.randint(1, 9))) for _ in texts]
    rows = feature_rows(tokenizer(texts, pairs if task_name == "qa" else None, truncation=True))
    traced = plain_runner("t", task, model, tokenizer, forward=forward)
    eager = plain_runner("t", task, model, tokenizer)
    none: list[str | None] = [None] * len(rows)
    # Chunks of 1 to 7 rows of every length up to the model's 64 positions.
    for rows_per_call in (1, 3, 7):
        got = run_rows(traced, rows, none, max_tokens=4096, max_rows=rows_per_call)
        want = run_rows(eager, rows, none, max_tokens=4096, max_rows=rows_per_call)
        for a, b in zip(got, want, strict=True):
            assert a.keys() == b.keys()
            for name in b:
                assert np.abs(a[name] - b[name]).max() <= 1e-5, name


class ValueDependent(torch.nn.Module):
    """A model whose forward branches on its inputs' values: a trace records one branch only."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.device = inner.device

    def forward(
        self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None
    ) -> Any:
        out = self.inner(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        if bool((attention_mask == 0).any()):  # padded batches only
            return {"logits": out.logits + 1.0}
        return {"logits": out.logits}


def test_a_trace_that_answers_otherwise_leaves_the_model_eager(tiny_dir: Path) -> None:
    task = get_task("classification")
    model = load_model(task, tiny_dir, label_names=LABELS["classification"])
    tokenizer = load_tokenizer(tiny_dir)
    assert traced_forward(ValueDependent(model).eval(), tokenizer) is None


def test_peft_models_stay_eager(tiny_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    task = get_task("classification")
    model = load_model(task, tiny_dir, label_names=LABELS["classification"])
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["query", "value"]))
    assert traced_forward(wrapped, load_tokenizer(tiny_dir)) is None
