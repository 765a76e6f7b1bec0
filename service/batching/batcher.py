"""Dynamic batching in the spirit of Triton's dynamic batcher: admission, the queue, and when a batch is sent.

Requests queue per (model version, graph or procedure). A batch is sent to a free model instance when it
holds `max_batch_size` rows or the oldest request has waited `max_queue_delay`, or, under the default
"adaptive" delay policy, at once when fewer than one more request is expected to join it before that
(`ArrivalRate`: a lone request on an idle model is not kept waiting; "fixed" is Triton's behaviour). Only
requests with the same bucket key (input shapes) are batched together, so nothing is padded into a wrong
answer. Inference runs on worker threads, off the event loop, up to one batch per instance at a time
(service/batching/execution.py). The queue is bounded (full -> 429), a request whose deadline passes
while queued gets 504 and is never computed, a request whose client disconnected is dropped, and
`drain()` finishes everything accepted before the batcher stops.

The batcher reports to a `BatchObserver` (Prometheus: service.metrics.PrometheusBatchObserver) and keeps
Triton-style statistics (`QueueStats`) for `/v2/models/{model}/stats`.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Generic

from service.batching.delay import DELAY_POLICIES, ArrivalRate
from service.batching.disconnect import DisconnectSignal
from service.batching.execution import BatchExecution
from service.batching.items import _DROPPED, ItemState, P, R, Waiting, _Instance, _Item
from service.batching.observer import BatchObserver, NullObserver
from service.batching.queue_bytes import QueueBytes, payload_nbytes
from service.batching.stats import ComputePhases, QueueStats
from service.errors import ClientDisconnected, DeadlineExceeded, NotReady, Overloaded


class DynamicBatcher(BatchExecution[P, R], Generic[P, R]):
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
        observer: BatchObserver | None = None,
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
        self._observer: BatchObserver = observer or NullObserver()
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

    async def submit(self, payload: P, ctx: Waiting | None = None) -> R:
        return (await self.submit_all([payload], ctx))[0]

    async def submit_all(self, payloads: Sequence[P], ctx: Waiting | None = None) -> list[R]:
        """Queue the parts of one request (e.g. the row chunks of a large OIP request): all are admitted or
        none is (429 before any is queued), and when one fails or the request gives up, the parts still
        queued are dropped with their payloads. Without `ctx`: the queue's default timeout, no disconnect."""
        loop = asyncio.get_running_loop()
        sizes = [self._nbytes(p) for p in payloads]
        self.check_admission(len(payloads), sum(sizes))
        rows = [self._rows(p) for p in payloads]
        if max(rows) > self.max_batch_size:
            raise ValueError(f"{max(rows)} rows exceed max_batch_size {self.max_batch_size}; split the request")
        now = time.monotonic()
        deadline = ctx.deadline if ctx is not None and ctx.deadline is not None else now + self.default_timeout_s
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
        self._observer.depth(self._queued)
        signal = ctx.disconnected if ctx is not None else None
        if (len(items) == 1 and self._idle and not (signal is not None and signal.is_set())
                and self._dispatched_at_once(items[0], now, loop)):
            # Computed right here (the idle fast path): no timer, no disconnect callback, nothing to wait for.
            self.arrivals.leave(time.monotonic())
            return [items[0].future.result()]
        # One timer and one callback per request (no waiter tasks): either drops its items while queued.
        timer = loop.call_later(deadline - now, self._expire_all, items)
        watch = None
        on_disconnect = functools.partial(self._disconnected_all, items)
        if isinstance(signal, DisconnectSignal):
            signal.add_callback(on_disconnect)
        elif signal is not None:  # a plain asyncio.Event: watch it with a task
            watch = loop.create_task(signal.wait())
            watch.add_done_callback(lambda _: on_disconnect())
        if signal is not None and signal.is_set():
            on_disconnect()
        # With every instance busy the worker waits for one to finish (`_finished` wakes it), not for arrivals.
        if self._idle:
            self._wake.set()
        if ctx is not None:
            ctx.waiting()
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
        self._observer.rejected(reason)
        self._observer.outcome(outcome)
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
        self._observer.depth(self._queued)
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
            self._observer.waited(now - item.enqueued_at)
            self.stats.queue.add(now - item.enqueued_at)
        self._queued = len(kept)
        self._observer.depth(self._queued)
        return batch
