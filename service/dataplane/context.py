"""A request's deadline and disconnect signal, whatever protocol brought it, and the timeout rules every
protocol reads them with (OIP `parameters.timeout`, HTTP's `X-Request-Timeout-Ms`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.batching.disconnect import DisconnectSignal
from service.errors import BadRequest


@dataclass
class RequestContext:
    """Per-request deadline (`time.monotonic()` clock, not the loop's: uvloop's is cached per iteration
    at millisecond resolution; None = the queue's default timeout) and a disconnect signal. `on_wait` starts
    the task that watches the client (HTTP: reading the connection), called by `waiting()`."""

    deadline: float | None = None
    disconnected: asyncio.Event = field(default_factory=DisconnectSignal)
    on_wait: Callable[[], asyncio.Task] | None = field(default=None, repr=False)
    watcher: asyncio.Task | None = field(default=None, repr=False)

    def waiting(self) -> None:
        """The batcher or the work pool is about to make the request wait: start the disconnect watch, once.
        A request answered without waiting (a tiny model computed inline) never starts one: no task per request."""
        start, self.on_wait = self.on_wait, None
        if start is not None:
            self.watcher = start()

    def stop_watching(self) -> None:
        """The answer is out: end the watch (its protocol's receive may never return)."""
        watcher, self.watcher, self.on_wait = self.watcher, None, None
        if watcher is not None and not watcher.done():
            watcher.cancel()
            watcher.add_done_callback(_forget_cancellation)

    @classmethod
    def with_timeout(cls, timeout_s: float) -> RequestContext:
        return cls(deadline=time.monotonic() + timeout_s)

    def tighten(self, timeout_s: float | None, now: float | None = None) -> None:
        """The earlier of the current deadline and `timeout_s` from `now` (default: now)."""
        if timeout_s is None:
            return
        deadline = (time.monotonic() if now is None else now) + timeout_s
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)


def timeout_seconds(timeout_us: object) -> float:
    """OIP `parameters.timeout` (microseconds) in seconds, for every protocol; 400 unless a positive finite number."""
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int | float) \
            or (isinstance(timeout_us, float) and not math.isfinite(timeout_us)) or timeout_us <= 0:
        raise BadRequest(f"parameters.timeout must be a positive finite number of microseconds, got {timeout_us!r}")
    return min(timeout_us, 1e15) / 1e6  # beyond ~30 years is "no timeout"; and a 400-digit int still divides


def timeout_ms_seconds(raw: str, name: str) -> float:
    """A timeout given as a string of milliseconds (`name`: where it came from, for the 400) in seconds."""
    try:
        timeout_ms = float(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a number of milliseconds, got {raw!r}") from exc
    if not (math.isfinite(timeout_ms) and timeout_ms > 0):
        raise BadRequest(f"{name} must be a positive finite number, got {raw!r}")
    return timeout_ms / 1000


def _forget_cancellation(task: asyncio.Task) -> None:
    """A cancelled task keeps its CancelledError, whose traceback holds the task's frames and through them the
    task: a reference cycle per request that only the cyclic GC frees (with the request's ASGI objects in it).
    Taking the exception out of the task breaks it, so reference counting frees all of it at once."""
    if task.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            task.exception()
