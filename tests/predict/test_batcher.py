"""Micro-batching: concurrent calls share model calls and each gets exactly its own answers."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.ml.tasks import get_task
from app.ml.tasks.serving import feature_rows
from app.predict.batcher import Batcher
from app.predict.predictor import plain_runner
from app.predict.runtime import ModelRunner, RowOutputs, plan_chunks, torch_forward
from tests.tinymodel import NEGATIVE, NEUTRAL, POSITIVE, build_tiny_model_dir

WORDS = POSITIVE + NEGATIVE + NEUTRAL + ["zebra", "quixotic"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-bert")


def load(tiny_dir: Path, task: str) -> tuple[Any, Any]:
    from app.ml.loading import load_model, load_tokenizer

    labels = ["O", "B-PER", "I-PER"] if task == "ner" else ["neg", "pos"]
    model = load_model(get_task(task), tiny_dir, label_names=[] if task == "qa" else labels)
    return model, load_tokenizer(tiny_dir)


def rows(tokenizer: Any, batch: list[str], pairs: list[str] | None = None) -> list[Any]:
    """Feature rows as a task's encode_inputs gives them: unpadded token ids."""
    return feature_rows(tokenizer(batch, pairs, truncation=True))


def texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(n)]


@pytest.fixture
def batcher() -> Iterator[Batcher]:
    b = Batcher(max_batch_tokens=4096, max_wait_ms=2.0)
    yield b
    b.stop()


@pytest.mark.parametrize("task", ["classification", "ner", "qa"])
def test_concurrent_calls_get_their_own_answers(
    tiny_dir: Path, batcher: Batcher, task: str
) -> None:
    model, tokenizer = load(tiny_dir, task)
    runner = plain_runner("tiny", get_task(task), model, tokenizer)
    requests = [texts(seed, random.Random(seed).randint(1, 6)) for seed in range(48)]

    def pairs(batch: list[str]) -> list[str] | None:
        return list(reversed(batch)) if task == "qa" else None

    def alone(batch: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(batch, pairs(batch), padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = model(**enc)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    expected = [alone(r) for r in requests]
    with ThreadPoolExecutor(16) as pool:
        got = list(
            pool.map(lambda r: batcher.submit(runner, rows(tokenizer, r, pairs(r)), None), requests)
        )
    for want, have, batch in zip(expected, got, requests, strict=True):
        assert len(have) == len(batch)
        lengths = [len(row["input_ids"]) for row in rows(tokenizer, batch, pairs(batch))]
        for i, (row_out, n) in enumerate(zip(have, lengths, strict=True)):
            assert set(row_out) == set(want)
            for name, tensor in want.items():
                # Token-level outputs come back without padding: one entry per real token.
                reference = tensor[i, :n] if runner.sequence_outputs else tensor[i]
                assert row_out[name].shape == tuple(reference.shape), name
                assert np.allclose(row_out[name], reference.numpy(), atol=1e-5), name
    assert "logits" in got[0][0] or "start_logits" in got[0][0]


class Caller:
    """Submits texts' feature rows through the batcher, as a Predictor does, for one runner."""

    def __init__(
        self, batcher: Batcher, tokenizer: Any, runner: ModelRunner, adapter: str | None = None
    ) -> None:
        self.batcher, self.tokenizer, self.runner, self.adapter = (
            batcher,
            tokenizer,
            runner,
            adapter,
        )

    def __call__(self, batch: list[str]) -> Outputs:
        return Outputs(self.batcher.submit(self.runner, rows(self.tokenizer, batch), self.adapter))


class Outputs(list[RowOutputs]):
    @property
    def shape(self) -> tuple[int, ...]:
        """(rows, labels): the shape the padded batch's logits would have."""
        return (len(self), *self[0]["logits"].shape)


def wait_for_pending(batcher: Batcher, calls: int) -> None:
    """Until `calls` calls wait behind the held model thread (however slow the machine)."""
    deadline = time.monotonic() + 600
    while len(batcher._pending) < calls:
        assert time.monotonic() < deadline, f"{len(batcher._pending)} of {calls} calls queued"
        threading.Event().wait(0.005)


class Recording:
    """A runner's forward that records batch shapes and can hold the model thread."""

    def __init__(self, model: Any) -> None:
        self.model = torch_forward(model, call=lambda batch, _adapters: model(**batch))
        self.shapes: list[tuple[int, int]] = []
        self.adapters: list[list[str | None]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def __call__(self, batch: dict[str, np.ndarray], adapters: list[str | None]) -> Any:
        self.entered.set()
        self.hold.wait(timeout=600)
        self.shapes.append(tuple(batch["input_ids"].shape))  # type: ignore[arg-type]
        self.adapters.append(adapters)
        return self.model(batch, adapters)


def runner_for(model: Any, tokenizer: Any, forward: Recording, **kw: Any) -> ModelRunner:
    base = plain_runner("tiny", get_task("classification"), model, tokenizer)
    return ModelRunner(
        group=kw.pop("group", "g"),
        label="tiny",
        runtime="torch",
        sequence_outputs=False,
        pad_values=base.pad_values,
        forward=forward,
        **kw,
    )


def test_calls_queued_while_the_model_is_busy_run_as_one_batch(
    tiny_dir: Path, batcher: Batcher
) -> None:
    model, tokenizer = load(tiny_dir, "classification")
    forward = Recording(model)
    batched = Caller(batcher, tokenizer, runner_for(model, tokenizer, forward))
    forward.hold.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(lambda: batched(["good film"]))
        assert forward.entered.wait(timeout=30)  # the model thread is busy with `first`
        later = [
            pool.submit(lambda t=t: batched(t))
            for t in (["bad"], ["a very good plot", "dull"], ["the story was nice and warm"])
        ]
        wait_for_pending(batcher, 3)  # all three queued behind `first`
        forward.hold.set()
        first.result(timeout=30)
        results = [f.result(timeout=30) for f in later]
    # Two model calls: `first`, then the four rows of the three queued calls together, padded
    # to the longest of them only.
    longest = len(tokenizer("the story was nice and warm")["input_ids"])
    assert forward.shapes == [(1, 4), (4, longest)]
    assert [len(r) for r in results] == [1, 2, 1]


def test_a_runner_of_one_row_a_run_gets_each_row_alone_and_its_own_answers(
    tiny_dir: Path,
) -> None:
    """ONNX int8's runner takes one row a run: queued calls are not gathered into one thread's
    batch, and every row's answer is the one it gets alone."""
    model, tokenizer = load(tiny_dir, "classification")
    forward = Recording(model)
    runner = runner_for(model, tokenizer, forward, max_rows=1)
    batcher = Batcher(max_batch_tokens=4096, max_wait_ms=30_000, workers=2)
    try:
        batched = Caller(batcher, tokenizer, runner)
        requests = [texts(seed, random.Random(seed).randint(1, 4)) for seed in range(24)]
        alone = [[batched([t])[0]["logits"] for t in r] for r in requests]
        forward.shapes.clear()
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(batched, requests))
        assert all(rows == 1 for rows, _ in forward.shapes), forward.shapes
        assert len(forward.shapes) == sum(map(len, requests))
        for want, have in zip(alone, got, strict=True):
            for w, h in zip(want, have, strict=True):
                np.testing.assert_array_equal(h["logits"], w)
        # One call's rows still run in the thread that took the call, a row a run.
        assert batched(texts(5, 7)).shape == (7, 2)
    finally:
        batcher.stop()


def test_token_budget_splits_a_batch_and_lone_calls_do_not_wait(tiny_dir: Path) -> None:
    model, tokenizer = load(tiny_dir, "classification")
    forward = Recording(model)
    # A long wait that a lone call must never pay, and a budget of 64 padded tokens.
    batcher = Batcher(max_batch_tokens=64, max_wait_ms=30_000)
    try:
        batched = Caller(batcher, tokenizer, runner_for(model, tokenizer, forward))
        many = texts(3, 20)
        out = batched(many)
        assert out.shape == (20, 2)
        assert len(forward.shapes) > 1
        assert all(rows * width <= 64 for rows, width in forward.shapes), forward.shapes
        # Sorted by length: the chunks' widths never decrease.
        widths = [w for _, w in forward.shapes]
        assert widths == sorted(widths)
        with ThreadPoolExecutor(1) as pool:
            for _ in range(3):  # each alone: answered long before the 30 s wait
                call = pool.submit(lambda: batched(["good"]))
                call.result(timeout=10)
    finally:
        batcher.stop()


def test_a_failing_model_call_fails_every_call_in_its_batch(
    tiny_dir: Path, batcher: Batcher
) -> None:
    model, tokenizer = load(tiny_dir, "classification")

    def broken(batch: dict[str, torch.Tensor], adapters: list[str | None]) -> Any:
        raise RuntimeError("out of memory (simulated)")

    runner = runner_for(model, tokenizer, Recording(model))
    runner.forward = broken
    batched = Caller(batcher, tokenizer, runner)
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(lambda: batched(["good"])) for _ in range(4)]
        for call in calls:
            with pytest.raises(RuntimeError, match="simulated"):
                call.result(timeout=30)
    # The model thread survives: a later call with a working model is answered.
    ok = Caller(batcher, tokenizer, plain_runner("t", get_task("classification"), model, tokenizer))
    assert ok(["good"]).shape == (1, 2)


def brute_force_cost(lengths: list[int], max_tokens: int, max_rows: int, overhead: int) -> int:
    """The cheapest cut of sorted `lengths` by trying every set of cut points."""
    n, best = len(lengths), None
    for mask in range(1 << (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        cost = 0
        for start, end in zip(cuts, cuts[1:], strict=False):
            rows, width = end - start, lengths[end - 1]
            if rows > max_rows or (rows > 1 and rows * width > max_tokens):
                break
            cost += rows * width + overhead
        else:
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def test_chunk_plans_are_the_cheapest_cuts_within_the_limits() -> None:
    # Equal lengths: one call. One long row among short ones: it runs alone.
    assert plan_chunks([10] * 8, max_tokens=4096, max_rows=64, overhead=24) == [(0, 8)]
    assert plan_chunks([5] * 12 + [120], max_tokens=4096, max_rows=64, overhead=24) == [
        (0, 12),
        (12, 13),
    ]
    # Limits: rows per call and padded tokens per call; a row over the budget alone.
    capped = plan_chunks([4] * 10, max_tokens=4096, max_rows=4, overhead=1)
    assert len(capped) == 3 and max(e - s for s, e in capped) == 4
    assert plan_chunks([3, 50, 200], max_tokens=100, max_rows=64, overhead=0) == [
        (0, 1),
        (1, 2),
        (2, 3),
    ]
    assert plan_chunks([], max_tokens=100, max_rows=8) == []
    rng = random.Random(7)
    for _ in range(300):
        lengths = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 11)))
        max_tokens, max_rows, overhead = rng.choice([64, 128, 4096]), rng.randint(1, 8), 24
        plan = plan_chunks(lengths, max_tokens=max_tokens, max_rows=max_rows, overhead=overhead)
        # Contiguous, covering every row once, within the limits...
        assert [s for s, _ in plan] == [0] + [e for _, e in plan[:-1]]
        assert plan[-1][1] == len(lengths)
        for start, end in plan:
            assert end - start <= max_rows
            assert end - start == 1 or (end - start) * lengths[end - 1] <= max_tokens
        # ...and no cut is cheaper.
        cost = sum((e - s) * lengths[e - 1] + overhead for s, e in plan)
        assert cost == brute_force_cost(lengths, max_tokens, max_rows, overhead), lengths


def test_model_threads_run_other_models_while_one_is_busy(tiny_dir: Path) -> None:
    model, tokenizer = load(tiny_dir, "classification")
    slow, fast = Recording(model), Recording(model)
    batcher = Batcher(max_wait_ms=0, workers=2)
    try:
        held = Caller(batcher, tokenizer, runner_for(model, tokenizer, slow, group="a"))
        other = Caller(batcher, tokenizer, runner_for(model, tokenizer, fast, group="b"))
        same = Caller(batcher, tokenizer, runner_for(model, tokenizer, Recording(model), group="a"))
        slow.hold.clear()
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(lambda: held(["good"]))
            assert slow.entered.wait(timeout=30)
            # The second thread answers another model, and the same model again, while the
            # first is still inside a forward (a plain model runs in several threads at once).
            assert other(["bad"]).shape == (1, 2)
            assert same(["dull"]).shape == (1, 2)
            assert not first.done()
            slow.hold.set()
            assert first.result(timeout=30).shape == (1, 2)
    finally:
        batcher.stop()


def test_a_shared_base_runs_in_one_thread_at_a_time(tiny_dir: Path) -> None:
    model, tokenizer = load(tiny_dir, "classification")
    shared, plain = Recording(model), Recording(model)
    batcher = Batcher(max_wait_ms=0, workers=2)
    try:
        base = runner_for(model, tokenizer, shared, group="base", concurrent=False)
        first_adapter = Caller(batcher, tokenizer, base, "A")
        second_adapter = Caller(batcher, tokenizer, base, "B")
        other = Caller(batcher, tokenizer, runner_for(model, tokenizer, plain, group="other"))
        shared.hold.clear()
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(lambda: first_adapter(["good"]))
            assert shared.entered.wait(timeout=30)
            queued = pool.submit(lambda: second_adapter(["bad"]))
            wait_for_pending(batcher, 1)
            # The free thread leaves the base's call queued and answers another model.
            assert other(["dull"]).shape == (1, 2)
            assert len(batcher._pending) == 1 and not queued.done()
            shared.hold.set()
            first.result(timeout=30)
            queued.result(timeout=30)
        # Never two forwards of the base at once: the calls ran one after the other.
        assert shared.adapters == [["A"], ["B"]]
    finally:
        batcher.stop()


def thread_recording(model: Any) -> tuple[Recording, list[str], Any]:
    """A Recording forward, and a forward through it that notes the thread of each call."""
    forward = Recording(model)
    threads: list[str] = []

    def where(batch: dict[str, torch.Tensor], adapters: list[str | None]) -> Any:
        threads.append(threading.current_thread().name)
        return forward(batch, adapters)

    return forward, threads, where


def test_a_lone_call_runs_in_its_own_thread_and_queued_calls_in_a_model_thread(
    tiny_dir: Path,
) -> None:
    model, tokenizer = load(tiny_dir, "classification")
    forward, threads, where = thread_recording(model)

    batcher = Batcher(max_wait_ms=0, workers=1)
    try:
        batched = Caller(batcher, tokenizer, runner_for(model, tokenizer, forward))
        batched.runner.forward = where
        # Nothing queued, the slot free: no hand-over to the model thread.
        batched(["good"])
        assert threads == [threading.current_thread().name]
        # The one slot busy (held inside a forward): the next call waits for a model thread.
        forward.entered.clear()
        forward.hold.clear()
        with ThreadPoolExecutor(2, thread_name_prefix="caller") as pool:
            first = pool.submit(lambda: batched(["bad"]))
            assert forward.entered.wait(timeout=30)
            second = pool.submit(lambda: batched(["dull"]))
            wait_for_pending(batcher, 1)
            forward.hold.set()
            first.result(timeout=30)
            second.result(timeout=30)
        assert threads[1].startswith("caller") and threads[2].startswith("model-thread")
    finally:
        batcher.stop()


def test_calls_awaited_on_an_event_loop_run_in_model_threads_with_their_own_answers(
    tiny_dir: Path,
) -> None:
    """submit_async never runs a model call in the loop's thread, even with a slot free, and its
    calls batch with calls submitted from threads."""
    model, tokenizer = load(tiny_dir, "classification")
    forward, threads, where = thread_recording(model)

    runner = runner_for(model, tokenizer, forward)
    runner.forward = where
    batcher = Batcher(max_batch_tokens=4096, max_wait_ms=2.0, workers=2)
    requests = [texts(seed, random.Random(seed).randint(1, 5)) for seed in range(40)]
    try:
        alone = [batcher.submit(runner, rows(tokenizer, r), None) for r in requests]
        threads.clear()

        async def main() -> tuple[list[Any], list[Any]]:
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(4) as pool:
                from_threads = [
                    loop.run_in_executor(pool, batcher.submit, runner, rows(tokenizer, r), None)
                    for r in requests[::2]
                ]
                from_loop = [
                    batcher.submit_async(runner, rows(tokenizer, r), None) for r in requests[1::2]
                ]
                return list(await asyncio.gather(*from_threads)), list(
                    await asyncio.gather(*from_loop)
                )

        from_threads, from_loop = asyncio.run(main())
    finally:
        batcher.stop()
    got = [None] * len(requests)
    got[::2], got[1::2] = from_threads, from_loop
    for want, have in zip(alone, got, strict=True):
        assert have is not None and len(have) == len(want)
        for w, h in zip(want, have, strict=True):
            np.testing.assert_allclose(h["logits"], w["logits"], atol=1e-5)
    # The thread callers may run theirs inline; the loop's thread never runs one.
    assert threading.current_thread().name not in threads
    assert all(t.startswith(("model-thread", "ThreadPoolExecutor")) for t in threads), threads
    assert any(t.startswith("model-thread") for t in threads)


def test_a_call_whose_waiter_gave_up_before_it_ran_is_dropped(tiny_dir: Path) -> None:
    model, tokenizer = load(tiny_dir, "classification")
    forward = Recording(model)
    runner = runner_for(model, tokenizer, forward)
    batcher = Batcher(max_batch_tokens=4096, max_wait_ms=0, workers=1)
    try:

        async def main() -> None:
            forward.hold.clear()
            first = asyncio.ensure_future(
                batcher.submit_async(runner, rows(tokenizer, ["good film"]), None)
            )
            assert await asyncio.to_thread(forward.entered.wait, 30)  # the one slot is busy
            given_up = asyncio.ensure_future(
                batcher.submit_async(runner, rows(tokenizer, ["bad", "dull", "nice"]), None)
            )
            kept = asyncio.ensure_future(
                batcher.submit_async(runner, rows(tokenizer, ["warm"]), None)
            )
            await asyncio.to_thread(wait_for_pending, batcher, 2)
            given_up.cancel()
            # Once the task has ended, its call's future is cancelled too.
            with pytest.raises(asyncio.CancelledError):
                await given_up
            forward.hold.set()
            assert len(await asyncio.wait_for(first, 30)) == 1
            assert len(await asyncio.wait_for(kept, 30)) == 1

        asyncio.run(main())
        # `first`, then `kept` alone: the three rows of the cancelled call never ran.
        assert [rows_ for rows_, _ in forward.shapes] == [1, 1], forward.shapes
        # The model thread goes on.
        assert Caller(batcher, tokenizer, runner)(["good"]).shape == (1, 2)
    finally:
        batcher.stop()
