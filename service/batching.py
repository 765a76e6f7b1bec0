"""Dynamic batching in the spirit of Triton's dynamic batcher.

Requests queue per (model version, graph or procedure). A batch is sent to a free model instance when it
holds `max_batch_size` rows or the oldest request has waited `max_queue_delay`, or, under the default
"adaptive" delay policy, at once when fewer than one more request is expected to join it before that
(`ArrivalRate`: a lone request on an idle model is not kept waiting; "fixed" is Triton's behaviour). Only
requests with the same bucket key (input shapes) are batched together, so nothing is padded into a wrong
answer. Inference runs on worker threads, off the event loop, up to one batch per instance at a time.
The queue is bounded (full -> 429), a request whose deadline passes
while queued gets 504 and is never computed, a request whose client disconnected is dropped, and
`drain()` finishes everything accepted before the batcher stops. When a batch of several requests fails,
each is run again alone, so that one bad input fails only its own request.

Each batcher also keeps Triton-style statistics (`QueueStats`: plain counters updated on the event loop,
no locks) for `/v2/models/{model}/stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

import numpy as np
from prometheus_client import Gauge

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, ServiceError
from service.metrics import Metrics

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/~])/(?:[^\s/'"():,]+/)+([^\s/'"():,]*)""")


def redact_paths(text: str) -> str:
    """`text` with every absolute filesystem path cut to its last component: error bodies reach clients,
    paths (repository layout, install locations) stay in the logs."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<path>", text)


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their cumulative nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def merge(self, other: Duration) -> None:
        self.count += other.count
        self.ns += other.ns

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ComputePhases:
    """Seconds of the last batch spent preparing inputs and splitting outputs, for a `run_batch` that can
    tell them apart (it writes them on the worker thread; the batcher reads them after the batch)."""

    input_s: float = 0.0
    output_s: float = 0.0


@dataclass
class PhaseStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def add(self, input_s: float, infer_s: float, output_s: float) -> None:
        self.compute_input.add(input_s)
        self.compute_infer.add(infer_s)
        self.compute_output.add(output_s)

    def merge(self, other: PhaseStats) -> None:
        self.compute_input.merge(other.compute_input)
        self.compute_infer.merge(other.compute_infer)
        self.compute_output.merge(other.compute_output)


@dataclass
class QueueStats:
    """Triton's statistics of one queue: per-request durations (success, fail, queue, compute phases of the
    batch each successful request ran in), executions by batch size, rows inferred."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: PhaseStats = field(default_factory=PhaseStats)
    inference_count: int = 0  # rows of successful requests
    execution_count: int = 0  # batches run successfully
    last_inference_ms: int = 0  # epoch milliseconds of the last successful batch
    batches: dict[int, PhaseStats] = field(default_factory=dict)  # by rows per batch

    @classmethod
    def combine(cls, parts: Iterable[QueueStats]) -> QueueStats:
        total = cls()
        for part in parts:
            for name in ("success", "fail", "queue"):
                getattr(total, name).merge(getattr(part, name))
            total.compute.merge(part.compute)
            total.inference_count += part.inference_count
            total.execution_count += part.execution_count
            total.last_inference_ms = max(total.last_inference_ms, part.last_inference_ms)
            for size, phases in part.batches.items():
                total.batches.setdefault(size, PhaseStats()).merge(phases)
        return total


class ClientDisconnected(ServiceError):
    status_code = 499
    code = "client_disconnected"


class DisconnectSignal(asyncio.Event):
    """An asyncio.Event that also calls registered callbacks when set: the batcher learns of a disconnect
    without a waiter task per queued request."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


@dataclass
class RequestContext:
    """Per-request deadline (`time.monotonic()` clock, not the loop's: uvloop's is cached per iteration
    at millisecond resolution; None = the queue's default timeout) and a disconnect signal."""

    deadline: float | None = None
    disconnected: asyncio.Event = field(default_factory=DisconnectSignal)

    @classmethod
    def with_timeout(cls, timeout_s: float) -> RequestContext:
        return cls(deadline=time.monotonic() + timeout_s)


class ItemState(StrEnum):
    """A queued request's life: QUEUED -> RUNNING (in a batch) | DROPPED (deadline, disconnect, cancel)."""

    QUEUED = "queued"
    RUNNING = "running"
    DROPPED = "dropped"


class _Dropped:
    """What a dropped item holds in place of its request's future: always done, never awaited."""

    @staticmethod
    def done() -> bool:
        return True


_DROPPED: asyncio.Future = _Dropped()  # type: ignore[assignment]


@dataclass(eq=False)
class _Item(Generic[P]):
    payload: P | None  # None once dropped: a request that gave up releases its tensors at once
    rows: int
    key: Hashable
    deadline: float
    future: asyncio.Future  # the waiter's; a dropped item lets go of it (see _drop)
    enqueued_at: float = 0.0
    nbytes: int = 0
    state: ItemState = ItemState.QUEUED


@dataclass
class _Instance(Generic[P, R]):
    """One execution slot (Triton's model instance): its own batch function (own session) and phases."""

    index: int
    run_batch: Callable[[list[P]], list[R]]
    phases: ComputePhases | None


class ArrivalRate:
    """Rate of arrivals that find other requests already held by the batcher (queued or computing), per
    second of time during which it holds any: the company a waiting request can expect. Closed-loop
    clients that wait for their answer (one client, or a few each waiting on its own request) bring none,
    so a lone request is not kept waiting for company that cannot come; under load the rate is high and
    batches fill. Both totals decay with time constant `tau_s`, so the estimate follows load changes."""

    def __init__(self, tau_s: float = 0.5) -> None:
        self.tau_s = tau_s
        self._company = 0.0  # decayed count of arrivals into an occupied batcher
        self._busy_s = 0.0  # decayed seconds with at least one request held
        self._held = 0
        self._last = time.monotonic()

    def _advance(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            decay = math.exp(-elapsed / self.tau_s)
            self._company *= decay
            self._busy_s = self._busy_s * decay + (self.tau_s * (1 - decay) if self._held else 0.0)
            self._last = now

    def arrive(self, now: float) -> None:
        self._advance(now)
        if self._held:
            self._company += 1
        self._held += 1

    def leave(self, now: float) -> None:
        self._advance(now)
        self._held -= 1

    def per_second(self, now: float) -> float:
        self._advance(now)
        return self._company / self._busy_s if self._busy_s > 1e-6 else 0.0


DELAY_POLICIES = ("adaptive", "fixed")


def payload_nbytes(payload: object) -> int:
    """Bytes a queued payload holds in arrays and buffers (numpy arrays, bytes, and containers or dataclasses
    of them): what the queue's byte bound counts. Small Python objects count as nothing."""
    if isinstance(payload, np.ndarray):
        return payload.nbytes
    if isinstance(payload, bytes | bytearray | memoryview):
        return len(payload)
    if isinstance(payload, dict):
        return sum(payload_nbytes(v) for v in payload.values())
    if isinstance(payload, list | tuple):
        return sum(payload_nbytes(v) for v in payload)
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return sum(payload_nbytes(getattr(payload, f.name)) for f in dataclasses.fields(payload))
    return 0


class QueueBytes:
    """The bytes held by every queued request of the service, against one bound (`SERVICE_MAX_QUEUED_BYTES`):
    a queue of decoded 4096x4096 images is bounded by memory, not only by its count of requests. Shared by
    every batcher; event loop only."""

    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._gauge = gauge

    def fits(self, nbytes: int) -> bool:
        # One request larger than the whole bound is still admitted into an empty service.
        return self.held == 0 or self.held + nbytes <= self.limit

    def change(self, nbytes: int) -> None:
        self.held += nbytes
        if self._gauge is not None:
            self._gauge.set(self.held)


class DynamicBatcher(Generic[P, R]):
    """`run_batch` is one batch function, or one per model instance (each with its own session): up to that
    many batches run at once on `executor` (which needs as many threads), so batch k+1 computes while batch
    k is split and answered. `delay_policy` "fixed" waits up to `max_queue_delay_s` for a full batch like
    Triton; "adaptive" (default) keeps that upper bound but sends a partial batch to an idle instance at
    once when fewer than one more request is expected before its delay ends (`ArrivalRate`)."""

    def __init__(
        self,
        *,
        model: str,
        version: int,
        queue: str,
        run_batch: Callable[[list[P]], list[R]] | Sequence[Callable[[list[P]], list[R]]],
        executor: Executor,
        metrics: Metrics,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        default_timeout_s: float = 30.0,
        rows: Callable[[P], int] = lambda _: 1,
        key: Callable[[P], Hashable] = lambda _: None,
        phases: ComputePhases | Sequence[ComputePhases] | None = None,
        delay_policy: str = "adaptive",
        inline_below_s: float = 0.0,
        cost: Callable[[P], int] | None = None,
        queue_bytes: QueueBytes | None = None,
        nbytes: Callable[[P], int] = payload_nbytes,
    ) -> None:
        if delay_policy not in DELAY_POLICIES:
            raise ValueError(f"delay_policy must be one of {DELAY_POLICIES}, got {delay_policy!r}")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.default_timeout_s = default_timeout_s
        self.delay_policy = delay_policy
        runs = list(run_batch) if isinstance(run_batch, Sequence) else [run_batch]
        phase_list = list(phases) if isinstance(phases, Sequence) else [phases] * len(runs)
        if len(phase_list) != len(runs):
            raise ValueError(f"{len(runs)} batch functions but {len(phase_list)} phase records")
        self._instances = [_Instance(i, fn, ph) for i, (fn, ph) in enumerate(zip(runs, phase_list, strict=True))]
        self._idle: list[_Instance[P, R]] = list(reversed(self._instances))  # pop() takes instance 0 first
        self._running: set[asyncio.Task] = set()
        self._rows = rows
        self._key = key
        self._executor = executor
        self._queue: deque[_Item[P]] = deque()
        self._queued = 0  # items in state "queued" (dropped ones may still sit in the deque, payload released)
        self._dead = 0  # dropped items still in the deque: compacted once they outnumber the live ones
        self._queue_bytes = queue_bytes or QueueBytes(limit=1 << 62)
        self._nbytes = nbytes
        self._rows_by_key: dict[Hashable, int] = {}  # queued rows per bucket: the fill check is O(1)
        self._wake = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None
        self._compute_ewma_s = 0.01
        # Inline execution: with one instance, a batch whose estimated compute (seconds per cost unit, e.g.
        # input byte, measured on the worker) is below `inline_below_s` runs on the event loop: handing a
        # 40 us inference to a thread and back costs 75-200 us on 2 cores, more than it saves. 0 = never.
        self.inline_below_s = inline_below_s
        self._cost = cost
        self._s_per_unit: float | None = None  # unknown until a batch has run on the worker
        self.arrivals = ArrivalRate()
        self.stats = QueueStats()
        labels = {"model": model, "version": str(version), "queue": queue}
        self._m_wait = metrics.queue_wait.labels(**labels)
        self._m_compute = metrics.compute.labels(**labels)
        self._m_batch = metrics.batch_size.labels(**labels)
        self._m_depth = metrics.queue_depth.labels(**labels)
        self._m_requests = {o: metrics.requests.labels(**labels, outcome=o)
                            for o in ("success", "error", "rejected", "timeout", "cancelled")}
        self._m_rejections = {r: metrics.rejections.labels(**labels, reason=r)
                              for r in ("queue_full", "deadline", "disconnected", "shutting_down", "request_failed")}
        self._name = f"{model}/{version}/{queue}"

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher:{self._name}")

    async def drain(self) -> None:
        """Stop accepting; finish every accepted request; stop the worker."""
        self._closing = True
        self._wake.set()
        if self._worker is not None:
            await self._worker

    # ---- submission ------------------------------------------------------------------------------
    def check_admission(self, requests: int = 1, nbytes: int = 0) -> None:
        """Raise now what `submit` would for a closing batcher, a full queue or a queue whose requests hold
        too many bytes: cheap, so a handler can call it before reading or decoding a request body (a 429 then
        costs nothing). `requests` slots are asked for at once (the chunks of one request)."""
        if self._closing:
            self._reject("shutting_down", "rejected")
            raise NotReady(f"{self._name} is shutting down")
        if self._queued + requests > self.max_queue_size:
            self._reject("queue_full", "rejected")
            what = f"{requests} slots" if requests > 1 else "a slot"
            raise Overloaded(
                f"queue of {self._name} is full ({self.max_queue_size} requests, {self._queued} queued; this request "
                f"needs {what}); retry later", retry_after_s=self._retry_after_s())
        if not self._queue_bytes.fits(nbytes):
            self._reject("queue_full", "rejected")
            raise Overloaded(
                f"queued requests hold {self._queue_bytes.held} bytes; {nbytes} more would pass the bound of "
                f"{self._queue_bytes.limit} bytes (SERVICE_MAX_QUEUED_BYTES) on {self._name}; retry later",
                retry_after_s=self._retry_after_s())

    async def submit(self, payload: P, ctx: RequestContext) -> R:
        return (await self.submit_all([payload], ctx))[0]

    async def submit_all(self, payloads: Sequence[P], ctx: RequestContext) -> list[R]:
        """Queue the parts of one request (e.g. the row chunks of a large OIP request): all are admitted or
        none is (429 before any is queued), and when one fails or the request gives up, the parts still
        queued are dropped with their payloads."""
        loop = asyncio.get_running_loop()
        sizes = [self._nbytes(p) for p in payloads]
        self.check_admission(len(payloads), sum(sizes))
        rows = [self._rows(p) for p in payloads]
        if max(rows) > self.max_batch_size:
            raise ValueError(f"{max(rows)} rows exceed max_batch_size {self.max_batch_size}; split the request")
        now = time.monotonic()
        deadline = ctx.deadline if ctx.deadline is not None else now + self.default_timeout_s
        if now >= deadline:
            self._reject("deadline", "timeout")
            raise DeadlineExceeded("request deadline already passed before queueing")
        items = [_Item(p, r, self._key(p), deadline, loop.create_future(), now, n)
                 for p, r, n in zip(payloads, rows, sizes, strict=True)]
        for item in items:
            self._queue.append(item)
            self._queued += 1
            self._queue_bytes.change(item.nbytes)
            self._rows_by_key[item.key] = self._rows_by_key.get(item.key, 0) + item.rows
            self.arrivals.arrive(now)
        self._m_depth.set(self._queued)
        # One timer and one callback per request (no waiter tasks): either drops its items while queued.
        timer = loop.call_later(deadline - now, self._expire_all, items)
        signal = ctx.disconnected
        watch = None
        on_disconnect = functools.partial(self._disconnected_all, items)
        if isinstance(signal, DisconnectSignal):
            signal.add_callback(on_disconnect)
        else:  # a plain asyncio.Event: watch it with a task
            watch = loop.create_task(signal.wait())
            watch.add_done_callback(lambda _: on_disconnect())
        if signal.is_set():
            on_disconnect()
        # With every instance busy the worker waits for one to finish (`_finished` wakes it), not for arrivals.
        if self._idle and not (len(items) == 1 and self._dispatched_at_once(items[0], now, loop)):
            self._wake.set()
        try:
            if len(items) == 1:
                return [await items[0].future]
            return list(await asyncio.gather(*(i.future for i in items)))
        except asyncio.CancelledError:
            self._drop_all(items, "disconnected", "cancelled")
            raise
        except Exception:
            self._drop_all(items, "request_failed", "cancelled")  # a sibling part failed: the rest is moot
            raise
        finally:
            timer.cancel()
            if watch is not None:
                watch.cancel()
            elif isinstance(signal, DisconnectSignal):
                signal.remove_callback(on_disconnect)
            later = time.monotonic()
            for _ in items:
                self.arrivals.leave(later)

    def _expire_all(self, items: list[_Item[P]]) -> None:
        for item in items:
            self._expire(item)

    def _disconnected_all(self, items: list[_Item[P]]) -> None:
        for item in items:
            self._disconnected(item)

    def _drop_all(self, items: list[_Item[P]], reason: str, outcome: str) -> None:
        for item in items:
            self._drop(item, reason, outcome)

    def _expire(self, item: _Item[P]) -> None:
        # A computing item is delivered anyway: the work is done.
        if item.state is ItemState.QUEUED:
            self._drop(item, "deadline", "timeout", DeadlineExceeded(
                f"deadline passed after {time.monotonic() - item.enqueued_at:.3f}s in the queue of {self._name}; "
                "the request was not computed"))

    def _disconnected(self, item: _Item[P]) -> None:
        if item.state is ItemState.QUEUED:
            self._drop(item, "disconnected", "cancelled",
                       ClientDisconnected("client disconnected before its batch started"))

    def _retry_after_s(self) -> int:
        backlog_batches = self._queued / self.max_batch_size / len(self._instances)
        return max(1, math.ceil(backlog_batches * self._compute_ewma_s))

    def _reject(self, reason: str, outcome: str, waited_s: float = 0.0) -> None:
        self._m_rejections[reason].inc()
        self._m_requests[outcome].inc()
        self.stats.fail.add(waited_s)

    def _drop(self, item: _Item[P], reason: str, outcome: str, error: BaseException | None = None) -> None:
        """Take a queued item out of the queue's accounting and answer its waiter with `error` (None: cancel).
        The item may sit on in the deque until compacted, but holds nothing of its request: not the payload,
        and not the future, whose exception's traceback holds the waiting frame and with it the payload."""
        if item.state is not ItemState.QUEUED:
            return
        item.state = ItemState.DROPPED
        future, item.future = item.future, _DROPPED
        item.payload = None
        if not future.done():
            if error is None:
                future.cancel()
            else:
                future.set_exception(error)
        self._queued -= 1
        self._dead += 1
        self._leave_queue(item)
        self._m_depth.set(self._queued)
        self._reject(reason, outcome, time.monotonic() - item.enqueued_at)
        if self._dead > 64 and self._dead > self._queued:
            self._compact()

    def _compact(self) -> None:
        """Drop dead items from the deque: behind a long-running head, givers-up must not pile up."""
        self._queue = deque(i for i in self._queue if i.state is ItemState.QUEUED)
        self._dead = 0

    # ---- worker ----------------------------------------------------------------------------------
    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._purge_head()
            if not self._queue or not self._idle:
                if self._closing and not self._queue and not self._running:
                    return
                # Woken by a submission, a finished batch (an instance is free) or drain().
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather(self._queue[0])
            batch = self._take_batch(time.monotonic())
            if batch and self._runs_inline(batch):
                instance = self._idle.pop()
                self._execute_inline(batch, instance)
                self._idle.append(instance)
            elif batch:
                instance = self._idle.pop()
                task = loop.create_task(self._execute(batch, instance, loop))
                self._running.add(task)
                task.add_done_callback(functools.partial(self._finished, instance))

    async def _gather(self, head: _Item[P]) -> None:
        """Wait until the head's batch is full, its delay is over, or (adaptive) no company is expected."""
        send_at = head.enqueued_at + self.max_queue_delay_s
        while not self._closing and head.state is ItemState.QUEUED and self._ready_rows(head.key) < self.max_batch_size:
            now = time.monotonic()
            remaining = send_at - now
            if remaining <= 0:
                return
            if self.delay_policy == "adaptive" and self.arrivals.per_second(now) * remaining < 1.0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _dispatched_at_once(self, item: _Item[P], now: float, loop: asyncio.AbstractEventLoop) -> bool:
        """The idle fast path: a request alone in an idle batcher, expecting no company (adaptive policy),
        cheap enough to run inline, is computed right here, without waking the worker (no task, no loop
        iterations in between). Anything else goes through the worker as usual."""
        if (self._closing or self.delay_policy != "adaptive" or self._running or len(self._idle) != len(self._instances)
                or len(self._queue) != 1 or self._queue[0] is not item or item.state is not ItemState.QUEUED):
            return False
        if self.max_batch_size > item.rows and self.arrivals.per_second(now) * self.max_queue_delay_s >= 1.0:
            return False
        if not self._runs_inline([item]):
            return False
        batch = self._take_batch(now)
        instance = self._idle.pop()
        try:
            self._execute_inline(batch, instance)
        finally:
            self._idle.append(instance)
        return True

    def _units(self, batch: list[_Item[P]]) -> int:
        return sum(self._cost(i.payload) for i in batch) if self._cost is not None else 0

    def _runs_inline(self, batch: list[_Item[P]]) -> bool:
        """Cheap enough to compute on the loop: one instance, and a measured cost estimate under the bound."""
        if self.inline_below_s <= 0 or self._s_per_unit is None or len(self._instances) != 1:
            return False
        return self._s_per_unit * self._units(batch) < self.inline_below_s

    def _finished(self, instance: _Instance[P, R], task: asyncio.Task) -> None:
        self._running.discard(task)
        self._idle.append(instance)
        self._wake.set()

    def _purge_head(self) -> None:
        while self._queue and self._queue[0].state is not ItemState.QUEUED:
            self._queue.popleft()
            self._dead -= 1

    def _ready_rows(self, key: Hashable) -> int:
        return self._rows_by_key.get(key, 0)

    def _leave_queue(self, item: _Item[P]) -> None:
        """Release a request's place in the per-bucket row count and in the byte bound."""
        self._queue_bytes.change(-item.nbytes)
        left = self._rows_by_key[item.key] - item.rows
        if left:
            self._rows_by_key[item.key] = left
        else:
            del self._rows_by_key[item.key]

    def _take_batch(self, now: float) -> list[_Item[P]]:
        self._purge_head()
        if not self._queue:
            return []
        key = self._queue[0].key
        batch: list[_Item[P]] = []
        rows = 0
        kept: deque[_Item[P]] = deque()
        for item in self._queue:
            if item.state is not ItemState.QUEUED:
                continue
            if now >= item.deadline:
                self._drop(item, "deadline", "timeout", DeadlineExceeded("deadline passed in the queue; not computed"))
                continue
            if item.key == key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._queue = kept
        self._dead = 0
        for item in batch:
            item.state = ItemState.RUNNING
            self._leave_queue(item)
            self._m_wait.observe(now - item.enqueued_at)
            self.stats.queue.add(now - item.enqueued_at)
        self._queued = len(kept)
        self._m_depth.set(self._queued)
        return batch

    async def _execute(self, batch: list[_Item[P]], instance: _Instance[P, R],
                       loop: asyncio.AbstractEventLoop) -> None:
        """Run one batch on a worker thread and answer its requests."""
        self._m_batch.observe(sum(i.rows for i in batch))
        started = time.perf_counter()
        try:
            results, worker_s = await loop.run_in_executor(self._executor, _timed_run, instance.run_batch,
                                                           [i.payload for i in batch])
            _check_count(results, batch)
        except Exception as exc:  # noqa: BLE001 - one bad batch must never kill the worker
            self._computed(batch, time.perf_counter() - started, None)
            if len(batch) > 1:
                self._log_split(batch, exc)
                for item in batch:
                    await self._execute([item], instance, loop)
                return
            self._fail(batch[0], exc)
            return
        self._computed(batch, time.perf_counter() - started, worker_s)
        self._deliver(batch, results, worker_s, instance.phases)

    def _execute_inline(self, batch: list[_Item[P]], instance: _Instance[P, R]) -> None:
        """`_execute` on the event loop, for batches cheaper than the thread hop (`_runs_inline`)."""
        self._m_batch.observe(sum(i.rows for i in batch))
        try:
            results, worker_s = _timed_run(instance.run_batch, [i.payload for i in batch])
            _check_count(results, batch)
        except Exception as exc:  # noqa: BLE001 - as in _execute
            if len(batch) > 1:
                self._log_split(batch, exc)
                for item in batch:
                    self._execute_inline([item], instance)
                return
            self._fail(batch[0], exc)
            return
        self._computed(batch, worker_s, worker_s)
        self._deliver(batch, results, worker_s, instance.phases)

    def _log_split(self, batch: list[_Item[P]], exc: Exception) -> None:
        # Which request broke the batch is unknown: each runs again alone so that only that one fails.
        log.warning("batch of %d failed on %s (%s); running its requests one by one",
                    len(batch), self._name, type(exc).__name__)

    def _computed(self, batch: list[_Item[P]], elapsed_s: float, worker_s: float | None) -> None:
        """Compute metrics, the Retry-After estimate and (from the worker's own time) the inline estimate."""
        self._m_compute.observe(elapsed_s)
        self._compute_ewma_s = 0.8 * self._compute_ewma_s + 0.2 * elapsed_s
        units = self._units(batch)
        if worker_s is not None and units > 0:
            per_unit = worker_s / units
            self._s_per_unit = per_unit if self._s_per_unit is None else 0.8 * self._s_per_unit + 0.2 * per_unit

    def _fail(self, item: _Item[P], exc: Exception) -> None:
        if isinstance(exc, ServiceError) and exc.status_code < 500:
            log.info("request rejected by %s: %s", self._name, exc)  # the input's fault: no traceback
            error: ServiceError = exc
        elif isinstance(exc, ServiceError):
            log.error("request failed on %s: %s", self._name, exc)
            error = exc
        else:
            log.error("inference failed on %s", self._name, exc_info=exc)
            error = InferenceFailed(f"inference failed on {self._name}: {type(exc).__name__}: "
                                    f"{redact_paths(str(exc))}")
        self._m_requests["error"].inc()
        self.stats.fail.add(time.monotonic() - item.enqueued_at)
        if not item.future.done():
            item.future.set_exception(error)

    def _deliver(self, batch: list[_Item[P]], results: list[R], worker_s: float,
                 phases: ComputePhases | None) -> None:
        phases = phases or ComputePhases()
        infer_s = max(0.0, worker_s - phases.input_s - phases.output_s)
        rows = sum(i.rows for i in batch)
        self.stats.execution_count += 1
        self.stats.last_inference_ms = int(time.time() * 1000)
        self.stats.batches.setdefault(rows, PhaseStats()).add(phases.input_s, infer_s, phases.output_s)
        now = time.monotonic()
        # A procedure may fail one request of a batch by returning its exception in that slot.
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                self._m_requests["error"].inc()
                self.stats.fail.add(now - item.enqueued_at)
                item.future.set_exception(result)
            else:
                self._m_requests["success"].inc()
                self.stats.success.add(now - item.enqueued_at)
                self.stats.compute.add(phases.input_s, infer_s, phases.output_s)
                self.stats.inference_count += item.rows
                item.future.set_result(result)


def _check_count(results: list, batch: list) -> None:
    if len(results) != len(batch):
        raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")


def _timed_run(run_batch: Callable[[list[P]], list[R]], payloads: list[P]) -> tuple[list[R], float]:
    started = time.perf_counter()
    results = run_batch(payloads)
    return results, time.perf_counter() - started


def split_rows(total: int, chunk: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering `total` rows in chunks of at most `chunk`."""
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]
