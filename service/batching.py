"""Dynamic batching in the spirit of Triton's dynamic batcher.

Requests queue per (model version, graph or procedure). A batch is sent when it holds `max_batch_size`
rows or the oldest request has waited `max_queue_delay`; only requests with the same bucket key (input
shapes) are batched together, so nothing is padded into a wrong answer. Inference runs on the version's
worker thread, off the event loop. The queue is bounded (full -> 429), a request whose deadline passes
while queued gets 504 and is never computed, a request whose client disconnected is dropped, and
`drain()` finishes everything accepted before the batcher stops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, ServiceError
from service.metrics import Metrics

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


class ClientDisconnected(ServiceError):
    status_code = 499
    code = "client_disconnected"


@dataclass
class RequestContext:
    """Per-request deadline (`time.monotonic()` clock, not the loop's: uvloop's is cached per iteration
    at millisecond resolution; None = the queue's default timeout) and a disconnect signal."""

    deadline: float | None = None
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def with_timeout(cls, timeout_s: float) -> RequestContext:
        return cls(deadline=time.monotonic() + timeout_s)


@dataclass(eq=False)
class _Item(Generic[P]):
    payload: P
    rows: int
    key: Hashable
    deadline: float
    future: asyncio.Future
    enqueued_at: float = 0.0
    state: str = "queued"  # queued -> running | dropped


class DynamicBatcher(Generic[P, R]):
    def __init__(
        self,
        *,
        model: str,
        version: int,
        queue: str,
        run_batch: Callable[[list[P]], list[R]],
        executor: Executor,
        metrics: Metrics,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        default_timeout_s: float = 30.0,
        rows: Callable[[P], int] = lambda _: 1,
        key: Callable[[P], Hashable] = lambda _: None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.default_timeout_s = default_timeout_s
        self._run_batch = run_batch
        self._rows = rows
        self._key = key
        self._executor = executor
        self._queue: deque[_Item[P]] = deque()
        self._queued = 0  # items in state "queued" (dropped ones may still sit in the deque)
        self._wake = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task | None = None
        self._compute_ewma_s = 0.01
        labels = {"model": model, "version": str(version), "queue": queue}
        self._m_wait = metrics.queue_wait.labels(**labels)
        self._m_compute = metrics.compute.labels(**labels)
        self._m_batch = metrics.batch_size.labels(**labels)
        self._m_depth = metrics.queue_depth.labels(**labels)
        self._m_requests = {o: metrics.requests.labels(**labels, outcome=o)
                            for o in ("success", "error", "rejected", "timeout", "cancelled")}
        self._m_rejections = {r: metrics.rejections.labels(**labels, reason=r)
                              for r in ("queue_full", "deadline", "disconnected", "shutting_down")}
        self._name = f"{model}/{version}/{queue}"

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
    async def submit(self, payload: P, ctx: RequestContext) -> R:
        loop = asyncio.get_running_loop()
        if self._closing:
            self._reject("shutting_down", "rejected")
            raise NotReady(f"{self._name} is shutting down")
        if self._queued >= self.max_queue_size:
            self._reject("queue_full", "rejected")
            raise Overloaded(
                f"queue of {self._name} is full ({self.max_queue_size} requests); retry later",
                retry_after_s=self._retry_after_s(),
            )
        rows = self._rows(payload)
        if rows > self.max_batch_size:
            raise ValueError(f"{rows} rows exceed max_batch_size {self.max_batch_size}; split the request")
        now = time.monotonic()
        deadline = ctx.deadline if ctx.deadline is not None else now + self.default_timeout_s
        if now >= deadline:
            self._reject("deadline", "timeout")
            raise DeadlineExceeded("request deadline already passed before queueing")
        item = _Item(payload, rows, self._key(payload), deadline, loop.create_future(), now)
        self._queue.append(item)
        self._queued += 1
        self._m_depth.set(self._queued)
        self._wake.set()

        disconnect = asyncio.ensure_future(ctx.disconnected.wait())
        try:
            await asyncio.wait({item.future, disconnect}, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._drop(item, "disconnected", "cancelled")
            raise
        finally:
            disconnect.cancel()
        if item.future.done():
            return item.future.result()
        if item.state == "queued":
            if ctx.disconnected.is_set():
                self._drop(item, "disconnected", "cancelled")
                raise ClientDisconnected("client disconnected before its batch started")
            self._drop(item, "deadline", "timeout")
            raise DeadlineExceeded(f"deadline passed after {time.monotonic() - item.enqueued_at:.3f}s in the queue "
                                   f"of {self._name}; the request was not computed")
        # Already computing: the work is done anyway, so deliver it.
        return await item.future

    def _retry_after_s(self) -> int:
        backlog_batches = self._queued / self.max_batch_size
        return max(1, math.ceil(backlog_batches * self._compute_ewma_s))

    def _reject(self, reason: str, outcome: str) -> None:
        self._m_rejections[reason].inc()
        self._m_requests[outcome].inc()

    def _drop(self, item: _Item[P], reason: str, outcome: str) -> None:
        if item.state != "queued":
            return
        item.state = "dropped"
        self._queued -= 1
        self._m_depth.set(self._queued)
        self._reject(reason, outcome)

    # ---- worker ----------------------------------------------------------------------------------
    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._purge_head()
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            head = self._queue[0]
            send_at = head.enqueued_at + self.max_queue_delay_s
            while not self._closing and self._ready_rows(head.key) < self.max_batch_size and head.state == "queued":
                remaining = send_at - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=remaining)
                except TimeoutError:
                    break
            batch = self._take_batch(time.monotonic())
            if batch:
                await self._execute(batch, loop)

    def _purge_head(self) -> None:
        while self._queue and self._queue[0].state != "queued":
            self._queue.popleft()

    def _ready_rows(self, key: Hashable) -> int:
        return sum(i.rows for i in self._queue if i.state == "queued" and i.key == key)

    def _take_batch(self, now: float) -> list[_Item[P]]:
        self._purge_head()
        if not self._queue:
            return []
        key = self._queue[0].key
        batch: list[_Item[P]] = []
        rows = 0
        kept: deque[_Item[P]] = deque()
        for item in self._queue:
            if item.state != "queued":
                continue
            if now >= item.deadline:
                self._drop(item, "deadline", "timeout")
                item.future.set_exception(DeadlineExceeded("deadline passed in the queue; not computed"))
                continue
            if item.key == key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._queue = kept
        for item in batch:
            item.state = "running"
            self._m_wait.observe(now - item.enqueued_at)
        self._queued = sum(1 for i in kept if i.state == "queued")
        self._m_depth.set(self._queued)
        return batch

    async def _execute(self, batch: list[_Item[P]], loop: asyncio.AbstractEventLoop) -> None:
        self._m_batch.observe(sum(i.rows for i in batch))
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, [i.payload for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
        except Exception as exc:  # noqa: BLE001 - one bad batch must never kill the worker
            log.exception("batch of %d failed on %s", len(batch), self._name)
            error = exc if isinstance(exc, ServiceError) else InferenceFailed(
                f"inference failed on {self._name}: {type(exc).__name__}: {exc}")
            for item in batch:
                self._m_requests["error"].inc()
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            elapsed = time.perf_counter() - started
            self._m_compute.observe(elapsed)
            self._compute_ewma_s = 0.8 * self._compute_ewma_s + 0.2 * elapsed
        # A procedure may fail one request of a batch by returning its exception in that slot.
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                self._m_requests["error"].inc()
                item.future.set_exception(result)
            else:
                self._m_requests["success"].inc()
                item.future.set_result(result)


def split_rows(total: int, chunk: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering `total` rows in chunks of at most `chunk`."""
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]
