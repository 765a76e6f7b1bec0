"""Serving fast path (issue 13): adaptive queue delay, model instances, GC freeze and pause metric.

The batcher is driven directly with real batch functions; one live service (two ONNX instances, adaptive
delay) checks the whole path over HTTP, including `gc_pause_seconds` on /metrics.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.harness import export_tiny, metric_value
from families.manifest import Batching
from service.batching.batcher import DynamicBatcher
from service.batching.delay import ArrivalRate
from service.dataplane.context import RequestContext
from service.gc_tuning import parse_thresholds
from service.metrics import Metrics, PrometheusBatchObserver
from service.models.instances import parse_instances


class Slow:
    """Doubles its inputs after `delay_s`; records (ids, thread, start, end) per batch."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.batches: list[tuple[list[int], str, float, float]] = []
        self._lock = threading.Lock()

    def __call__(self, payloads: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        started = time.perf_counter()
        time.sleep(self.delay_s)
        with self._lock:
            self.batches.append(([int(p["id"][0]) for p in payloads], threading.current_thread().name, started,
                                 time.perf_counter()))
        return [{"y": p["id"] * 2} for p in payloads]


def batcher(runs, *, workers: int = 1, **overrides) -> DynamicBatcher:
    limits = dict(max_batch_size=4, max_queue_delay_s=0.2, max_queue_size=64)
    limits.update(overrides)
    return DynamicBatcher(model="m", version=1, queue="model", run_batch=runs,
                          executor=ThreadPoolExecutor(max_workers=workers),
                          observer=PrometheusBatchObserver(Metrics(), "m", 1, "q"),
                          rows=lambda p: int(p["id"].shape[0]), **limits)


def one(i: int) -> dict[str, np.ndarray]:
    return {"id": np.full((1,), i, dtype=np.int64)}


def test_a_lone_request_on_an_idle_model_is_sent_at_once() -> None:
    async def scenario() -> list[float]:
        b = batcher(Slow(0.0))
        b.start()
        waits = []
        for i in range(5):  # closed loop: each request waits for its answer before the next is sent
            started = time.perf_counter()
            await b.submit(one(i), RequestContext())
            waits.append(time.perf_counter() - started)
        await b.drain()
        return waits

    waits = asyncio.run(scenario())
    assert max(waits) < 0.05, waits  # the delay is 0.2 s: nobody waited for company


def test_under_load_batches_still_fill_to_max_batch_size() -> None:
    async def scenario() -> Slow:
        slow = Slow(0.02)
        b = batcher(slow, max_queue_delay_s=0.05)
        b.start()

        async def client(c: int) -> None:  # 8 closed-loop clients: company is always on its way
            for i in range(6):
                await b.submit(one(c * 100 + i), RequestContext())

        await asyncio.gather(*(client(c) for c in range(8)))
        await b.drain()
        return slow

    slow = asyncio.run(scenario())
    sizes = [len(ids) for ids, *_ in slow.batches]
    assert sum(sizes) == 48
    assert max(sizes) == 4
    assert sum(sizes) / len(sizes) > 3, sizes


def test_the_fixed_policy_keeps_triton_behaviour() -> None:
    async def scenario() -> float:
        b = batcher(Slow(0.0), max_queue_delay_s=0.08, delay_policy="fixed")
        b.start()
        started = time.perf_counter()
        await b.submit(one(1), RequestContext())
        waited = time.perf_counter() - started
        await b.drain()
        return waited

    assert 0.07 <= asyncio.run(scenario()) < 1.0


def test_unknown_delay_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="delay_policy"):
        batcher(Slow(0.0), delay_policy="sometimes")
    with pytest.raises(ValueError, match="delay_policy"):
        Batching(delay_policy="sometimes")


def test_arrival_rate_counts_only_arrivals_that_find_company() -> None:
    rate = ArrivalRate(tau_s=1.0)
    now = time.monotonic()
    for k in range(20):  # one closed-loop client: arrive, answered, arrive...
        rate.arrive(now + k * 0.002)
        rate.leave(now + k * 0.002 + 0.001)
    assert rate.per_second(now + 0.05) == 0.0
    for k in range(20):  # overlapping requests
        rate.arrive(now + 0.05 + k * 0.001)
    assert rate.per_second(now + 0.07) > 100


def test_two_instances_compute_two_batches_at_once() -> None:
    async def scenario() -> tuple[Slow, Slow, float]:
        first, second = Slow(0.15), Slow(0.15)
        b = batcher([first, second], workers=2, max_batch_size=1, max_queue_delay_s=0)
        b.start()
        started = time.perf_counter()
        results = await asyncio.gather(*(b.submit(one(i), RequestContext()) for i in range(4)))
        elapsed = time.perf_counter() - started
        assert [int(r["y"][0]) for r in results] == [0, 2, 4, 6]
        await b.drain()
        return first, second, elapsed

    first, second, elapsed = asyncio.run(scenario())
    assert len(first.batches) == 2 and len(second.batches) == 2  # each instance ran its own session
    assert elapsed < 0.5  # 4 batches of 0.15 s on 2 instances: ~0.3 s, not 0.6 s


def test_instances_keep_deadlines_and_drain() -> None:
    from service.errors import DeadlineExceeded

    async def scenario() -> list:
        b = batcher([Slow(0.1), Slow(0.1)], workers=2, max_batch_size=1, max_queue_delay_s=0)
        b.start()
        tasks = [asyncio.create_task(b.submit(one(i), RequestContext())) for i in range(4)]
        late = asyncio.create_task(b.submit(one(9), RequestContext(deadline=time.monotonic() + 0.05)))
        await asyncio.sleep(0)
        await b.drain()
        return [*await asyncio.gather(*tasks), await asyncio.gather(late, return_exceptions=True)]

    *answered, (late,) = asyncio.run(scenario())
    assert [int(r["y"][0]) for r in answered] == [0, 2, 4, 6]
    assert isinstance(late, DeadlineExceeded)


def inline_batcher(runs, *, inline_below_s: float, **overrides) -> DynamicBatcher:
    b = batcher(runs, **overrides)
    b.inline_below_s = inline_below_s
    b._cost = lambda p: int(p["id"].nbytes)  # the repository's cost: input bytes
    return b


def test_cheap_batches_run_on_the_loop_thread_once_their_cost_is_measured() -> None:
    async def scenario() -> Slow:
        runs = Slow(0.0)
        b = inline_batcher(runs, inline_below_s=0.05)
        b.start()
        for i in range(3):  # sequential: each one is alone on an idle model
            assert int((await b.submit(one(i), RequestContext()))["y"][0]) == 2 * i
        await b.drain()
        return runs

    runs = asyncio.run(scenario())
    loop_thread = threading.current_thread().name
    threads = [thread for _, thread, _, _ in runs.batches]
    assert threads[0] != loop_thread  # no estimate yet: the first batch is measured on a worker
    assert threads[1:] == [loop_thread, loop_thread]


def test_expensive_batches_stay_on_the_worker_thread() -> None:
    async def scenario() -> Slow:
        runs = Slow(0.02)  # 20 ms a batch, bound 1 ms
        b = inline_batcher(runs, inline_below_s=0.001)
        b.start()
        for i in range(3):
            await b.submit(one(i), RequestContext())
        await b.drain()
        return runs

    runs = asyncio.run(scenario())
    assert all(thread != threading.current_thread().name for _, thread, _, _ in runs.batches)


def test_a_failing_inline_batch_fails_only_its_bad_request() -> None:
    class FailsOn(Slow):
        def __call__(self, payloads):
            if any(int(p["id"][0]) == 13 for p in payloads):
                raise ValueError("boom")
            return super().__call__(payloads)

    async def scenario() -> list:
        runs = FailsOn(0.0)
        b = inline_batcher(runs, inline_below_s=0.05, max_queue_delay_s=0.05, delay_policy="fixed")
        b.start()
        await b.submit(one(0), RequestContext())  # measured on the worker: later batches run inline
        results = await asyncio.gather(*(b.submit(one(i), RequestContext()) for i in (11, 12, 13, 14)),
                                       return_exceptions=True)
        await b.drain()
        return results

    results = asyncio.run(scenario())
    assert [int(r["y"][0]) for r in results if isinstance(r, dict)] == [22, 24, 28]
    assert isinstance(results[2], Exception) and "boom" in str(results[2])


def test_the_fixed_policy_never_dispatches_inside_submit() -> None:
    async def scenario() -> float:
        b = inline_batcher(Slow(0.0), inline_below_s=0.05, max_queue_delay_s=0.05, delay_policy="fixed")
        b.start()
        await b.submit(one(0), RequestContext())
        started = time.perf_counter()
        await b.submit(one(1), RequestContext())  # cheap and alone, but Triton's policy waits the full delay
        waited = time.perf_counter() - started
        await b.drain()
        return waited

    assert asyncio.run(scenario()) >= 0.045


def test_gc_pauses_are_recorded_without_locks_and_exported() -> None:
    metrics = Metrics()
    metrics.gc_pauses.install()
    try:
        before, _ = metrics.gc_pauses.pauses(2)
        gc.collect()
        after, seconds = metrics.gc_pauses.pauses(2)
    finally:
        metrics.gc_pauses.uninstall()
    assert after == before + 1 and seconds > 0
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "gc_pause_seconds_count", {"generation": "2"}) >= 1


def test_settings_parsers_name_the_setting() -> None:
    assert parse_thresholds("2000,25,1000") == (2000, 25, 1000)
    with pytest.raises(ValueError, match="SERVICE_GC_THRESHOLDS"):
        parse_thresholds("0,1,2")
    assert parse_instances("2") == {"*": 2}
    assert parse_instances("tiny=2, traffic=1") == {"tiny": 2, "traffic": 1}
    with pytest.raises(ValueError, match="SERVICE_INSTANCES"):
        parse_instances("tiny=many")


@pytest.fixture(scope="module")
def instance_server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, serve):
    repository = tmp_path_factory.mktemp("fastpath-repo")
    export_tiny(tiny_checkpoint, repository, "tiny", max_batch_size="8", max_queue_delay_ms="200")
    return serve(repository, env={"SERVICE_INSTANCES": "tiny=2"})


def test_live_service_with_two_instances_answers_at_once_and_exports_gc_pauses(instance_server) -> None:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}
    with httpx.Client(base_url=instance_server.url, timeout=30) as client:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            response = client.post("/v2/models/tiny/infer", json=body)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
        text = client.get("/metrics").text
    assert min(times) < 0.1, times  # max_queue_delay is 200 ms: the adaptive policy did not wait
    assert metric_value(text, "gc_pause_seconds_count", {"generation": "2"}) >= 1  # the start-up freeze
