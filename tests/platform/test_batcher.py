"""DynamicBatcher semantics, driven directly (the live-server tests cover it end to end over HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching.batcher import DynamicBatcher
from service.dataplane.context import RequestContext
from service.errors import ClientDisconnected, DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics, PrometheusBatchObserver


class Recorder:
    """A real batch function (doubles its inputs) that records every batch it computed."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.started = threading.Event()

    def __call__(self, payloads: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        self.started.set()
        ids = [int(p["id"][0]) for p in payloads]
        self.batches.append(ids)
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in ids:
            raise ValueError("boom")
        return [{"y": p["id"] * 2} for p in payloads]


def make(run, **overrides) -> DynamicBatcher:
    limits = dict(max_batch_size=4, max_queue_delay_s=0.02, max_queue_size=64)
    limits.update(overrides)
    return DynamicBatcher(model="m", version=1, queue="model", run_batch=run,
                          executor=ThreadPoolExecutor(max_workers=1),
                          observer=PrometheusBatchObserver(Metrics(), "m", 1, "q"),
                          rows=lambda p: int(p["id"].shape[0]),
                          key=lambda p: p["id"].shape[1:], **limits)


def payload(i: int, rows: int = 1) -> dict[str, np.ndarray]:
    return {"id": np.full((rows,), i, dtype=np.int64)}


def run_async(coro):
    return asyncio.run(coro)


def test_batches_fill_up_to_max_and_results_return_in_order() -> None:
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(payload(i), RequestContext()) for i in range(10)))
        await batcher.drain()
        return recorder, results

    recorder, results = run_async(scenario())
    assert [int(r["y"][0]) for r in results] == [2 * i for i in range(10)]
    assert max(len(b) for b in recorder.batches) == 4
    assert sorted(i for b in recorder.batches for i in b) == list(range(10))


def test_partial_batch_is_sent_after_max_queue_delay_with_the_fixed_policy() -> None:
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder, max_queue_delay_s=0.05, delay_policy="fixed")
        batcher.start()
        started = time.perf_counter()
        await batcher.submit(payload(1), RequestContext())
        waited = time.perf_counter() - started
        await batcher.drain()
        return waited

    waited = run_async(scenario())
    assert 0.04 <= waited < 1.0


def test_requests_of_different_shapes_are_never_batched_together() -> None:
    async def scenario():
        seen: list[set] = []

        def run(payloads):
            seen.append({p["x"].shape[1:] for p in payloads})
            return [{"y": p["x"]} for p in payloads]

        batcher = DynamicBatcher(model="m", version=1, queue="q", run_batch=run,
                                 executor=ThreadPoolExecutor(1), max_batch_size=8,
                                 observer=PrometheusBatchObserver(Metrics(), "m", 1, "q"),
                                 max_queue_delay_s=0.05, max_queue_size=64, key=lambda p: p["x"].shape[1:])
        batcher.start()
        shapes = [(1, 3), (1, 5)] * 4
        await asyncio.gather(*(batcher.submit({"x": np.zeros(s)}, RequestContext()) for s in shapes))
        await batcher.drain()
        return seen

    seen = run_async(scenario())
    assert all(len(shapes) == 1 for shapes in seen)
    assert len(seen) == 2


def test_full_queue_rejects_immediately_with_retry_after() -> None:
    async def scenario():
        recorder = Recorder(delay_s=0.2)
        batcher = make(recorder, max_batch_size=1, max_queue_size=3, max_queue_delay_s=0)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(payload(i), RequestContext())) for i in range(12)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.drain()
        return results

    results = run_async(scenario())
    rejected = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, dict)]
    assert rejected and served
    assert len(served) <= 4  # one running + queue of 3
    assert all(int(r.headers["Retry-After"]) >= 1 for r in rejected)


def test_expired_request_gets_504_and_is_never_computed() -> None:
    async def scenario():
        recorder = Recorder(delay_s=0.3)
        batcher = make(recorder, max_batch_size=1, max_queue_delay_s=0)
        batcher.start()
        blocker = asyncio.create_task(batcher.submit(payload(1), RequestContext()))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(payload(2), RequestContext(deadline=time.monotonic() + 0.05))
        await blocker
        await batcher.drain()
        return recorder

    recorder = run_async(scenario())
    assert [i for b in recorder.batches for i in b] == [1]


def test_disconnected_client_is_dropped_from_the_queue() -> None:
    async def scenario():
        recorder = Recorder(delay_s=0.3)
        batcher = make(recorder, max_batch_size=1, max_queue_delay_s=0)
        batcher.start()
        blocker = asyncio.create_task(batcher.submit(payload(1), RequestContext()))
        await asyncio.sleep(0.05)
        ctx = RequestContext()
        gone = asyncio.create_task(batcher.submit(payload(2), ctx))
        await asyncio.sleep(0.05)
        ctx.disconnected.set()
        with pytest.raises(ClientDisconnected):
            await gone
        await blocker
        await batcher.drain()
        return recorder

    recorder = run_async(scenario())
    assert [i for b in recorder.batches for i in b] == [1]


def test_a_failing_batch_fails_its_requests_but_not_the_worker() -> None:
    async def scenario():
        recorder = Recorder(fail_on=3)
        batcher = make(recorder, max_batch_size=1, max_queue_delay_s=0)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(payload(i), RequestContext()) for i in range(5)),
                                       return_exceptions=True)
        after = await batcher.submit(payload(9), RequestContext())
        await batcher.drain()
        return results, after

    results, after = run_async(scenario())
    assert isinstance(results[3], InferenceFailed)
    assert [int(r["y"][0]) for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8]
    assert int(after["y"][0]) == 18


def test_drain_answers_every_accepted_request_then_refuses_new_ones() -> None:
    async def scenario():
        recorder = Recorder(delay_s=0.02)
        batcher = make(recorder, max_batch_size=2, max_queue_delay_s=0)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(payload(i), RequestContext())) for i in range(9)]
        await asyncio.sleep(0)  # let them enqueue
        await batcher.drain()
        results = await asyncio.gather(*tasks)
        with pytest.raises(NotReady):
            await batcher.submit(payload(99), RequestContext())
        return results

    results = run_async(scenario())
    assert [int(r["y"][0]) for r in results] == [2 * i for i in range(9)]


def test_oversized_submission_is_refused() -> None:
    async def scenario():
        batcher = make(Recorder())
        batcher.start()
        with pytest.raises(ValueError, match="max_batch_size"):
            await batcher.submit(payload(1, rows=5), RequestContext())
        await batcher.drain()

    run_async(scenario())
