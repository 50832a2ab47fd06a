"""A fast tokenizer keeps its padding and truncation settings in the Rust object and changes them
at every call: concurrent requests sharing it must not see each other's settings.

Issue 13's reproducer: NER texts of 1 to 60 "Peter lives in Paris" from 8 threads once got a batch
tokenized with padding back unpadded ("expected sequence of length 11 at dim 1 (got 22)").
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from app.ml.loading import load_model, load_tokenizer
from app.ml.tasks import get_task
from app.ml.tasks.classification import ClassificationPredictRequest, TextPair
from app.ml.tasks.ner import NerPredictRequest
from app.ml.tasks.qa import QAInput, QAPredictRequest
from app.predict.batcher import Batcher
from app.predict.predictor import Predictor, plain_runner
from app.predict.runtime import run_rows
from app.predict.tokenizers import TokenizerPool
from tests.predict.conftest import same_answers
from tests.tinymodel import NEUTRAL, POSITIVE, build_tiny_model_dir

LABELS = {"classification": ["neg", "pos"], "ner": ["O", "B-PER", "I-PER", "B-LOC"], "qa": []}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def batcher() -> Iterator[Batcher]:
    b = Batcher(max_batch_tokens=4096, max_wait_ms=2.0)
    yield b
    b.stop()


def predictor(tiny_dir: Path, task_name: str, tokenizer: Any) -> Predictor:
    task = get_task(task_name)
    model = load_model(task, tiny_dir, label_names=LABELS[task_name]).eval()
    return Predictor(
        model_id=f"tiny-{task_name}",
        task=task,
        model=model,
        tokenizer=tokenizer,
        label_names=LABELS[task_name],
        max_length=64,
        threads=1,
        options=task.options_model(),
        runner=plain_runner(task_name, task, model, tokenizer),
    )


def ner_request(n: int) -> NerPredictRequest:
    return NerPredictRequest(model="m", inputs=[" ".join(["Peter lives in Paris"] * n)])


def mixed_requests(seed: int) -> list[tuple[str, BaseModel]]:
    """NER texts of 1-60 sentences, classification singles and pairs, QA over long contexts."""
    rng = random.Random(seed)
    requests: list[tuple[str, BaseModel]] = []
    for n in range(1, 61):
        requests.append(("ner", ner_request(n)))
        words = " ".join(rng.choices(NEUTRAL + POSITIVE, k=rng.randint(1, 40)))
        if n % 3 == 0:
            single = ClassificationPredictRequest(model="m", inputs=[words], top_k=None)
            requests.append(("classification", single))
        elif n % 3 == 1:
            pair = TextPair(text=words, text_pair=" ".join(rng.choices(NEUTRAL, k=n)))
            requests.append(
                ("classification", ClassificationPredictRequest(model="m", inputs=[pair]))
            )
        else:
            context = " ".join(rng.choices(NEUTRAL, k=rng.randint(5, 150)))
            question = "which is " + " ".join(rng.choices(POSITIVE, k=rng.randint(1, 30)))
            qa = QAPredictRequest(model="m", inputs=[QAInput(question=question, context=context)])
            requests.append(("qa", qa))
    rng.shuffle(requests)
    return requests


def run_concurrently(
    predictors: dict[str, Predictor],
    requests: list[tuple[str, BaseModel]],
    batcher: Batcher,
) -> None:
    expected = [predictors[task].predict(body) for task, body in requests]
    with ThreadPoolExecutor(8) as pool:
        got = list(
            pool.map(lambda r: predictors[r[0]].predict(r[1], batcher=batcher), requests * 3)
        )
    for answer, want in zip(got, expected * 3, strict=True):
        same_answers(answer, want)


def test_concurrent_ner_requests_on_one_model(tiny_dir: Path, batcher: Batcher) -> None:
    # One model: its two calls of the tokenizer (one to count sub-tokens, one to encode the
    # windows) from 8 request threads.
    ner = predictor(tiny_dir, "ner", load_tokenizer(tiny_dir))
    requests: list[tuple[str, BaseModel]] = [("ner", ner_request(n)) for n in range(1, 61)]
    random.Random(0).shuffle(requests)
    run_concurrently({"ner": ner}, requests, batcher)


def test_one_tokenizer_shared_by_every_task(tiny_dir: Path, batcher: Batcher) -> None:
    # Whatever shares a tokenizer (here one object handed to three models of three tasks, each
    # calling it its own way), concurrent requests get their own settings.
    tokenizer = load_tokenizer(tiny_dir)
    predictors = {task: predictor(tiny_dir, task, tokenizer) for task in LABELS}
    run_concurrently(predictors, mixed_requests(1), batcher)


def test_task_pipeline_on_a_pooled_tokenizer(tiny_dir: Path, batcher: Batcher) -> None:
    # A tokenizer from the pool is safe by itself, also for code that runs a task's
    # encode_inputs and postprocess without a Predictor: the pool hands out serialized ones.
    tokenizer = TokenizerPool().get(tiny_dir)
    models = {}
    for name in LABELS:
        task = get_task(name)
        model = load_model(task, tiny_dir, label_names=LABELS[name]).eval()
        models[name] = (task, plain_runner(name, task, model, tokenizer))

    def predict(request: tuple[str, BaseModel], *, batched: bool) -> list[Any]:
        task, runner = models[request[0]]
        options = task.options_model()
        encoded = task.encode_inputs(tokenizer, request[1], max_length=64, options=options)
        if batched:
            outputs = batcher.submit(runner, encoded.rows, None)
        else:
            none: list[str | None] = [None] * len(encoded.rows)
            outputs = run_rows(runner, encoded.rows, none, max_tokens=4096, max_rows=32)
        return task.postprocess(
            request[1], encoded, outputs, label_names=LABELS[request[0]], options=options
        )

    requests = mixed_requests(2)
    expected = [predict(r, batched=False) for r in requests]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda r: predict(r, batched=True), requests * 2))
    for answer, want in zip(got, expected * 2, strict=True):
        same_answers(answer, want)
