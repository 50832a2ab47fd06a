"""LoRA models of one base share its weights in memory, mix in one batch, and never answer for
each other; the cache evicts within its memory budget and frees a base with its last adapter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import JobStatus, Model
from app.ml.tasks.classification import ClassificationPredictRequest
from app.predict.batcher import Batcher, ModelRunner
from app.predict.cache import PredictorCache
from app.predict.predictor import Predictor, load_predictor
from app.predict.shared import SharedBases
from worker.jobs import run_job

TEXTS = ["a great superb film", "awful boring plot", "the story", "nice warm and bright", "dull"]


def _train(settings: Any, db: Session, add_job: Callable[..., str], **kw: Any) -> Model:
    job_id = add_job(epochs=2, learning_rate=1e-2, **kw)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED
    row = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    db.expunge(row)
    return row


@pytest.fixture
def loras(train_settings, db: Session, add_job: Callable[..., str]) -> list[Model]:  # type: ignore[no-untyped-def]
    # Different seeds and ranks: three different models of one base.
    return [
        _train(train_settings, db, add_job, method={"type": "lora", "r": r}, seed=seed)
        for seed, r in ((1, 4), (2, 8), (3, 4))
    ]


def scores(predictor: Predictor, batcher: Batcher | None = None) -> torch.Tensor:
    request = ClassificationPredictRequest(model=predictor.model_id, inputs=TEXTS, top_k=None)
    results = predictor.predict(request, batcher=batcher)
    return torch.tensor([[s.score for s in sorted(r, key=lambda s: s.label)] for r in results])


def test_adapters_share_one_base_and_answer_as_their_own_model(
    train_settings, loras: list[Model]
) -> None:  # type: ignore[no-untyped-def]
    shared = SharedBases()
    own = [load_predictor(train_settings, row) for row in loras]  # each merged on its own base
    on_base = [load_predictor(train_settings, row, shared=shared) for row in loras]
    assert len(shared.memory()) == 1  # one base for the three
    base_bytes = next(iter(shared.memory().values()))
    for p in on_base:
        assert p.adapter is not None and 0 < p.weight_bytes < base_bytes / 5
    # One tokenizer for the three (same files, task and max_length): ~10 MB each otherwise.
    assert all(p.tokenizer is on_base[0].tokenizer for p in on_base + own)
    expected = [scores(p) for p in own]
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the models differ
    for p, want in zip(on_base, expected, strict=True):
        assert torch.allclose(scores(p), want, atol=1e-5)


def test_requests_for_different_adapters_share_a_batch_without_mixing_answers(
    train_settings, loras: list[Model]
) -> None:  # type: ignore[no-untyped-def]
    shared = SharedBases()
    own = [scores(load_predictor(train_settings, row)) for row in loras]
    on_base = [load_predictor(train_settings, row, shared=shared) for row in loras]
    runner: ModelRunner = on_base[0].runner  # type: ignore[assignment]
    assert all(p.runner is runner for p in on_base)

    # Record every batch the model thread runs, and hold the first one until all are queued.
    seen: list[list[str | None]] = []
    forward, hold = runner.forward, threading.Event()

    def recording(batch: dict[str, torch.Tensor], adapters: list[str | None]) -> Any:
        seen.append(list(adapters))
        hold.wait(timeout=600)
        return forward(batch, adapters)

    runner.forward = recording
    # A model call's cost set so high that a batch is never cut by length.
    batcher = Batcher(max_batch_tokens=100_000, max_wait_ms=0, chunk_overhead_tokens=10**6)
    order = [0, 1, 2, 1, 0, 2, 2, 0, 1]
    try:
        with ThreadPoolExecutor(len(order)) as pool:
            futures = [pool.submit(scores, on_base[i], batcher) for i in order]
            # The first batch holds the model thread (it may have taken a few calls); every
            # other call queues behind it.
            deadline = time.monotonic() + 600
            while not seen or len(seen[0]) // len(TEXTS) + len(batcher._pending) < len(order):
                assert time.monotonic() < deadline, "the calls never all queued"
                threading.Event().wait(0.005)
            hold.set()
            results = [f.result(timeout=60) for f in futures]
    finally:
        batcher.stop()
    # The queued calls, of all three adapters, ran as one batch...
    assert len(seen) == 2 and len(seen[0]) + len(seen[1]) == len(order) * len(TEXTS)
    assert {a.split("#")[0] for a in seen[1]} == {row.id for row in loras}  # type: ignore[union-attr]
    # ... and each request got its own model's answer.
    for i, got in zip(order, results, strict=True):
        assert torch.allclose(got, own[i], atol=1e-5), i


def test_cache_evicts_within_its_budget_and_frees_a_base_with_its_last_adapter(
    train_settings, loras: list[Model]
) -> None:  # type: ignore[no-untyped-def]
    shared = SharedBases()
    sizes = []
    for row in loras:
        alone = load_predictor(train_settings, row, shared=shared)
        sizes.append(alone.weight_bytes)
        base_bytes = sum(shared.memory().values())
        alone.close()
        assert shared.memory() == {}  # its last adapter gone, the base went too
    assert sizes[1] > sizes[0]  # rank 8 against rank 4

    # Room for the base and the last two adapters, not all three.
    budget = base_bytes + sizes[1] + sizes[2] + min(sizes) // 2
    cache = PredictorCache(64, budget_bytes=budget, shared=shared)
    for row in loras:
        cache.get_or_load(row.id, lambda r=row: load_predictor(train_settings, r, shared=shared))
    assert cache.keys() == [loras[1].id, loras[2].id]  # the least recently used went
    (key,) = [k for k in shared._bases]
    assert sorted(a.split("#")[0] for a in shared.adapters_of(key)) == sorted(cache.keys())
    assert cache.total_bytes() <= cache.budget  # type: ignore[operator]

    # A request for the evicted model loads it again (and evicts the next least recent).
    cache.get_or_load(loras[0].id, lambda: load_predictor(train_settings, loras[0], shared=shared))
    assert cache.keys() == [loras[2].id, loras[0].id]
    cache.clear()
    assert shared.memory() == {}


def test_a_dropped_predictor_keeps_its_adapter_until_its_requests_finish() -> None:
    released: list[bool] = []
    p = Predictor.__new__(Predictor)
    p.release, p._users, p._closing, p._state = (
        (lambda: released.append(True)),
        1,
        False,
        (threading.Lock()),
    )
    p.close()
    assert released == []  # a request is still using it
    with p._state:
        p._users -= 1
    p._closing and p._users == 0 and p._release()
    assert released == [True]
    p.close()
    assert released == [True]  # released once


def test_api_serves_adapters_from_one_shared_base(
    app, client: TestClient, loras: list[Model]
) -> None:  # type: ignore[no-untyped-def]
    expected = []
    for row in loras:
        resp = client.post(
            "/v1/predict/classification", json={"model": row.id, "inputs": TEXTS, "top_k": None}
        )
        assert resp.status_code == 200, resp.text
        expected.append(resp.json()["predictions"])
    assert len(app.state.shared_bases.memory()) == 1
    assert len(app.state.predictors) == 3
    # Concurrent mixed requests: every answer is its own model's.
    with ThreadPoolExecutor(9) as pool:
        futures = [
            (
                i,
                pool.submit(
                    client.post,
                    "/v1/predict/classification",
                    json={"model": loras[i].id, "inputs": TEXTS, "top_k": None},
                ),
            )
            for i in [0, 1, 2] * 3
        ]
        for i, future in futures:
            body = future.result().json()
            assert body["model"] == loras[i].id
            for got, want in zip(body["predictions"], expected[i], strict=True):
                assert [s["label"] for s in got] == [s["label"] for s in want]
                for a, b in zip(got, want, strict=True):
                    assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_two_model_threads_run_one_base_at_once_each_with_its_own_adapters(
    train_settings, loras: list[Model]
) -> None:  # type: ignore[no-untyped-def]
    shared = SharedBases()
    own = [scores(load_predictor(train_settings, row)) for row in loras[:2]]
    on_base = [load_predictor(train_settings, row, shared=shared) for row in loras[:2]]
    assert on_base[0].model is on_base[1].model
    # Each forward waits at a middle layer until the other is there too: both calls are inside
    # the one base at the same time (a base run one forward at a time would never get past it).
    barrier, armed = threading.Barrier(2, timeout=120), [True]
    layer = next(
        m for name, m in on_base[0].model.named_modules() if name.endswith("encoder.layer.1")
    )

    def meet(module: Any, args: Any) -> None:
        if armed[0]:
            barrier.wait()

    handle = layer.register_forward_pre_hook(meet)
    batcher = Batcher(max_wait_ms=0, workers=2, chunk_overhead_tokens=10**6)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(scores, on_base[0], batcher)
            deadline = time.monotonic() + 120
            while barrier.n_waiting < 1:  # the first forward is inside the base
                assert time.monotonic() < deadline and not first.done()
                threading.Event().wait(0.005)
            second = pool.submit(scores, on_base[1], batcher)
            results = [first.result(timeout=120), second.result(timeout=120)]
    finally:
        armed[0] = False
        handle.remove()
        batcher.stop()
    # Each got its own model's answers, though the other's rows ran through the same layers at
    # the same time.
    for got, want in zip(results, own, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(results[0], results[1], atol=1e-3)
