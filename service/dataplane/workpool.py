"""Bounded CPU work off the event loop: decoding uploads, preprocessing, k-NN, inflating streams.

Every request-sized piece of CPU work goes through one `WorkPool` (a few worker threads), so that:
- nothing heavy runs on the event loop (health and other clients keep answering);
- admission is decided first: when `max_pending` jobs are queued or running, the request gets 429 with
  `Retry-After` before its body is decoded (`admit()` is cheap enough to call before reading it);
- a job whose request deadline passes, or whose client disconnects, before a worker picks it up is
  never run (504 / dropped); one already running is finished and its result discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from service.batching.disconnect import DisconnectSignal
from service.dataplane.context import RequestContext
from service.errors import ClientDisconnected, DeadlineExceeded, Overloaded
from service.metrics import Metrics

T = TypeVar("T")
RESERVE_GRACE_S = 1.0  # how long a reserve()d request reading its body counts against max_pending


class WorkPool:
    def __init__(self, metrics: Metrics, *, workers: int, max_pending: int, default_timeout_s: float = 30.0) -> None:
        self.workers = workers
        self.max_pending = max_pending
        self.default_timeout_s = default_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="workpool")
        self._pending = 0  # queued + running; only touched on the event loop
        self._reading: dict[object, float] = {}  # reserve()d bodies being read -> start; event loop only
        self._ewma_s = 0.01
        self._lock = threading.Lock()
        self._m_depth = metrics.work_pending
        self._m_rejections = metrics.work_rejections
        self._m_duration = metrics.work_duration

    @property
    def pending(self) -> int:
        return self._pending

    def admit(self, what: str = "request") -> None:
        """Raise 429 now if a new job would not be accepted (call before reading or decoding a body)."""
        if self._pending + self._recent_readers() >= self.max_pending:
            self._m_rejections.labels(reason="queue_full").inc()
            backlog_s = self._pending / max(1, self.workers) * self._ewma_s
            raise Overloaded(f"preprocessing queue is full ({self.max_pending} jobs) while handling {what}; "
                             "retry later", retry_after_s=max(1, math.ceil(backlog_s)))

    def _recent_readers(self) -> int:
        horizon = time.monotonic() - RESERVE_GRACE_S
        return sum(1 for started in self._reading.values() if started > horizon)

    @contextlib.contextmanager
    def reserve(self, what: str = "request") -> Iterator[None]:
        """`admit()`, then hold a place while the body is read (leave the block right before `run()`): in a
        burst, every request would otherwise pass `admit()` before any has queued a job, and all of them
        would read and parse their bodies on the event loop before the queue bound refuses them. A body
        still arriving after RESERVE_GRACE_S stops counting, so slow uploads cannot hold the pool."""
        self.admit(what)
        token = object()
        self._reading[token] = time.monotonic()
        try:
            yield
        finally:
            del self._reading[token]

    async def run(self, fn: Callable[..., T], *args: object, ctx: RequestContext | None = None,
                  what: str = "request", admitted: bool = False) -> T:
        """Run `fn(*args)` on a worker thread under the request's deadline and disconnect signal.

        A job counts against `max_pending` from submission until its thread is done with it (not until its
        request stops waiting: a disconnect during a running job leaves the thread busy). `admitted=True`
        for the follow-up work of a request already admitted and computed (rendering its answer): it is
        counted but never refused, so finished work is not thrown away."""
        if not admitted:
            self.admit(what)
        now = time.monotonic()
        deadline = ctx.deadline if ctx is not None and ctx.deadline is not None else now + self.default_timeout_s
        if now >= deadline:
            self._m_rejections.labels(reason="deadline").inc()
            raise DeadlineExceeded(f"request deadline passed before {what} started")
        started = threading.Event()

        def job() -> T:
            started.set()
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                elapsed = time.perf_counter() - t0
                self._m_duration.observe(elapsed)
                with self._lock:
                    self._ewma_s = 0.8 * self._ewma_s + 0.2 * elapsed

        self._pending += 1
        self._m_depth.set(self._pending)
        loop = asyncio.get_running_loop()
        future: Future[T] = self._executor.submit(job)
        future.add_done_callback(functools.partial(self._job_finished, loop))
        wrapped = asyncio.wrap_future(future)
        waiters: set[asyncio.Future] = {wrapped}
        disconnect: asyncio.Future | None = None
        on_disconnect = None
        if ctx is not None:
            ctx.waiting()
            signal = ctx.disconnected
            if isinstance(signal, DisconnectSignal):  # a callback, not a waiter task per job
                disconnect = loop.create_future()
                on_disconnect = functools.partial(_settle, disconnect)
                signal.add_callback(on_disconnect)
                if signal.is_set():
                    on_disconnect()
            else:
                disconnect = asyncio.ensure_future(signal.wait())
            waiters.add(disconnect)
        try:
            await asyncio.wait(waiters, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            if wrapped.done():
                return wrapped.result()
            if future.cancel():  # not started yet: it never runs
                if ctx is not None and ctx.disconnected.is_set():
                    self._m_rejections.labels(reason="disconnected").inc()
                    raise ClientDisconnected(f"client disconnected before {what} started")
                self._m_rejections.labels(reason="deadline").inc()
                raise DeadlineExceeded(f"request deadline passed while {what} waited for a worker; not computed")
            if ctx is not None and ctx.disconnected.is_set():
                raise ClientDisconnected(f"client disconnected during {what}")
            # Running already: a thread cannot be interrupted, so the deadline is reported when it ends.
            await asyncio.shield(wrapped)
            raise DeadlineExceeded(f"request deadline passed during {what}")
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            if on_disconnect is not None:
                ctx.disconnected.remove_callback(on_disconnect)  # type: ignore[union-attr]
            if disconnect is not None:
                disconnect.cancel()

    def _job_finished(self, loop: asyncio.AbstractEventLoop, _: Future) -> None:
        """Done callback of a job's future (its thread, or the loop when cancelled before it started)."""
        with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown: nothing left to count
            loop.call_soon_threadsafe(self._job_done)

    def _job_done(self) -> None:
        self._pending -= 1
        self._m_depth.set(self._pending)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
