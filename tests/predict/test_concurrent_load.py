"""Concurrent load on /predict for each task: a tiny trained model served by the real app with the
batcher on, 8 client threads sending inputs of varied lengths. No 5xx, and every answer is the one
the model gives that input alone (one input at a time, without the batcher)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.db.models import Model
from app.ml.tasks import get_task
from app.predict.batcher import Batcher
from app.predict.predictor import load_predictor
from app.predict.router import _text_chars
from tests.conftest import RecordingQueue, auth, create_api_key
from tests.predict.conftest import same_answers
from tests.tinymodel import NEGATIVE, NEUTRAL, POSITIVE, sentiment_rows

CLIENTS = 8


def train(settings: Any, db: Session, stored: dict[str, Any], task: str, **options: Any) -> Model:
    """A tiny model of `task` trained for real (2 epochs, max_length 32)."""
    from tests.ml.test_ner_training import ner_rows
    from tests.ml.test_qa import synthetic_rows
    from tests.worker.test_lineage import full_tiny_model

    rows = {
        "classification": lambda: sentiment_rows(40),
        "ner": lambda: ner_rows(40, seed=0),
        "qa": lambda: synthetic_rows(24, seed=1),
    }[task]()
    return full_tiny_model(settings, db, stored, task, rows, **options)


def unbatched(predictor: Any, row: Model, body: dict[str, Any]) -> list[Any]:
    """The answers to `body`, each input predicted alone (one input a call, no batcher) by a
    predictor of the test's own, not the app's."""
    request_model = get_task(row.task).predict_request
    answers = []
    for item in body["inputs"]:
        one = request_model.model_validate({**body, "model": row.id, "inputs": [item]})
        [answer] = predictor.predict(one)
        answers.append(_json(answer))
    return answers


def _json(value: Any) -> Any:
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def load_test(settings: Any, row: Model, bodies: list[dict[str, Any]]) -> None:
    """Send every body 2 times from 8 threads through the real app; check every answer."""
    from app.main import create_app

    alone = load_predictor(settings, row)
    expected = [unbatched(alone, row, body) for body in bodies]
    settings.rate_limit_per_minute = 0  # hundreds of requests from one key
    # A wider window than the default 2 ms, so that requests sent together meet in a batch even
    # when the other test worker keeps both cores busy (the answers are checked all the same).
    settings.batch_max_wait_ms = 25
    # Half the requests (the smaller) are encoded on the event loop, the others in worker threads;
    # both kinds share the model threads' batches.
    # Sized as the route sizes them.
    sizes = sorted(_text_chars(body["inputs"]) for body in bodies)
    settings.predict_loop_max_chars = sizes[len(sizes) // 2]
    application = create_app(settings, queue=RecordingQueue())
    batcher: Batcher = application.state.batcher
    assert batcher is not None
    paths = {"loop": 0, "thread": 0}
    submit, submit_async = batcher.submit, batcher.submit_async

    def from_thread(*args: Any) -> Any:
        paths["thread"] += 1
        return submit(*args)

    async def from_loop(*args: Any) -> Any:
        paths["loop"] += 1
        return await submit_async(*args)

    batcher.submit, batcher.submit_async = from_thread, from_loop  # type: ignore[method-assign]
    # Record how many requests' calls each batch joined (the real batcher, watched). The first
    # batch waits until other requests queue behind it (they wait for the model it holds), so that
    # the next batch is shared however the test workers' threads are scheduled on a busy machine.
    joined: list[int] = []
    run = batcher._run

    def watched(calls: list[Any]) -> None:
        joined.append(len(calls))
        if len(joined) == 1:
            deadline = time.monotonic() + 10
            while len(batcher._pending) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
        run(calls)

    batcher._run = watched  # type: ignore[method-assign]
    route = f"/v1/predict/{row.task}"
    work = [(i, {**body, "model": row.id}) for i, body in enumerate(bodies)] * 2
    random.Random(0).shuffle(work)
    try:
        headers = auth(create_api_key(settings))
        with (
            TestClient(application, headers=headers) as client,
            ThreadPoolExecutor(CLIENTS) as pool,
        ):
            responses = list(pool.map(lambda w: client.post(route, json=w[1]), work))
    finally:
        application.state.engine.dispose()
    failed = [(r.status_code, r.text[:300]) for r in responses if r.status_code != 200]
    assert not failed, failed
    for (i, _), response in zip(work, responses, strict=True):
        same_answers(response.json()["predictions"], expected[i])
    # The load was concurrent: some model calls served several requests at once.
    assert max(joined) > 1, joined
    # Both ways in (a request is encoded in a thread while its model is still to load, too).
    assert paths["loop"] >= len(work) // 3 and paths["thread"] >= len(work) // 3, paths


def words(rng: random.Random, pool: list[str], low: int, high: int) -> str:
    return " ".join(rng.choices(pool, k=rng.randint(low, high)))


def test_classification_under_concurrent_load(
    train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    row = train(train_settings, db, stored_rows, "classification")
    rng = random.Random(1)
    vocab = POSITIVE + NEGATIVE + NEUTRAL + ["zebra", "quixotic"]
    bodies: list[dict[str, Any]] = []
    for n in range(48):
        inputs: list[Any] = []
        for _ in range(rng.randint(1, 3)):
            text = words(rng, vocab, 1, 1 + n)
            # Pairs and single texts, in one request and across requests.
            pair = rng.random() < 0.4
            inputs.append({"text": text, "text_pair": words(rng, vocab, 1, 20)} if pair else text)
        bodies.append({"inputs": inputs, "top_k": None})
    load_test(train_settings, row, bodies)


def test_ner_under_concurrent_load(
    train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    row = train(train_settings, db, stored_rows, "ner")
    rng = random.Random(2)
    bodies: list[dict[str, Any]] = []
    for n in range(1, 61, 2):
        # The reproducer, and texts with the persons and places the model learnt.
        bodies.append({"inputs": [" ".join(["Peter lives in Paris"] * n)]})
        text = words(rng, NEUTRAL + POSITIVE + NEGATIVE, n, 3 * n)
        inputs: list[Any] = [text]
        if n % 3 == 0:
            inputs.append({"tokens": text.split()})
        bodies.append({"inputs": inputs})
    load_test(train_settings, row, bodies)


def test_qa_under_concurrent_load(
    train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    row = train(train_settings, db, stored_rows, "qa", doc_stride=8)
    rng = random.Random(3)
    bodies: list[dict[str, Any]] = []
    for n in range(40):
        inputs = []
        for _ in range(rng.randint(1, 2)):
            # Contexts up to 250 words: several doc-stride windows of 32 tokens each.
            context = words(rng, NEUTRAL, 4, 10 + 6 * n).split()
            context[rng.randrange(len(context))] = rng.choice(POSITIVE)
            question = "which is good" if n % 4 else words(rng, NEUTRAL + POSITIVE, 1, 20)
            inputs.append({"question": question, "context": " ".join(context)})
        bodies.append({"inputs": inputs, "top_k": 1 + n % 3})
    load_test(train_settings, row, bodies)
