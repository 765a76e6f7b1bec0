"""Shadow copies of a rollout: a finished live request copied to the candidate version off the response path,
one at a time and only while no live request is in flight, its answer compared with the baseline's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from service.rollouts import quality
from service.rollouts.state import Rollout, ShadowJob, Ticket

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from service.rollouts.metrics import RolloutMetrics

log = logging.getLogger(__name__)

SHADOW_STALE_S = 10.0  # a copy that waited longer for the live requests to finish is dropped
# Scope keys a replayed copy keeps: what routing and the handlers read; the rest is per-connection state.
_SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "root_path",
               "query_string", "headers", "server", "client", "app", "extensions")


class ShadowCopies:
    """The shadow half of `RolloutController` (service/rollouts/controller.py), which owns the state it reads."""

    rollouts: dict[str, Rollout]
    m: RolloutMetrics
    replay_app: ASGIApp | None
    live_in_flight: int
    _idle: asyncio.Event | None
    _workpool: Any

    def enqueue_shadow(self, ticket: Ticket, scope: dict[str, Any], body: bytes, answer: bytes | None) -> None:
        """Queue a copy of a finished live request for the candidate; dropped (and counted) when full."""
        rollout = ticket.rollout
        if self.rollouts.get(rollout.model) is not rollout:
            self._drop(rollout, "ended")
            return
        job = ShadowJob({k: scope[k] for k in _SCOPE_KEYS if k in scope}, body,
                        answer if ticket.compare else None, fanout=ticket.fanout)
        try:
            rollout.queue.put_nowait(job)
        except asyncio.QueueFull:
            self._drop(rollout, "queue_full")
            return
        self.m.shadow_queued.labels(rollout.model).set(rollout.queue.qsize())

    def _drop(self, rollout: Rollout, reason: str) -> None:
        rollout.dropped[reason] += 1
        self.m.shadow_dropped.labels(rollout.model, str(rollout.candidate), reason).inc()

    # ---- shadow copies ----------------------------------------------------------------------------------
    async def _shadow_worker(self, rollout: Rollout) -> None:
        """One copy at a time, and only while no live request is in flight: live requests go first."""
        while True:
            job = await rollout.queue.get()
            self.m.shadow_queued.labels(rollout.model).set(rollout.queue.qsize())
            if not await self._wait_idle(job):
                self._drop(rollout, "stale")
                continue
            pool = self._workpool
            if pool is not None and pool.pending * 2 >= pool.max_pending:
                self._drop(rollout, "busy")  # the work pool's places are the live requests'
                continue
            try:
                await self._replay(rollout, job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed copy is counted, never fatal to the worker
                log.exception("shadow copy on %s v%d failed", rollout.model, rollout.candidate)

    async def _wait_idle(self, job: ShadowJob) -> bool:
        if self._idle is None:
            self._idle = asyncio.Event()
        while self.live_in_flight > 0:
            left = SHADOW_STALE_S - (time.monotonic() - job.queued_at)
            if left <= 0:
                return False
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), left)
        return True

    async def _replay(self, rollout: Rollout, job: ShadowJob) -> None:
        assert self.replay_app is not None
        ticket = Ticket(rollout, rollout.candidate, replay=False, compare=False)
        scope = {**job.scope, "state": {"rollout_replay": ticket, "arrived_at": time.monotonic()}}
        done = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": job.body, "more_body": False}
            await done.wait()  # no disconnect while the copy runs
            return {"type": "http.disconnect"}

        status = 500
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        started = time.perf_counter()
        try:
            await self.replay_app(scope, receive, send)
        except Exception:  # noqa: BLE001 - counted as the candidate's error
            status = 500
        finally:
            done.set()
            ctx = scope["state"].get("inference_context")
            if ctx is not None:
                ctx.stop_watching()
        seconds = time.perf_counter() - started
        error = status >= 500
        rollout.shadow_run += 1
        if job.fanout:
            if error:
                log.warning("fan-out copy on %s v%d answered %d", rollout.model, rollout.candidate, status)
            return
        rollout.path_stats(rollout.candidate, "shadow").add(seconds, error)
        labels = (rollout.model, str(rollout.candidate), "candidate", "shadow")
        self.m.requests.labels(*labels, "error" if error else "ok").inc()
        self.m.duration.labels(*labels).observe(seconds)
        if job.baseline_answer is not None and 200 <= status < 300:
            difference, agreed = await asyncio.to_thread(quality.compare, job.baseline_answer, b"".join(chunks))
            self._record_comparison(rollout, difference, agreed)

    def _record_comparison(self, rollout: Rollout, difference: float | None, agreed: bool | None) -> None:
        if difference is None and agreed is None:
            return
        version = str(rollout.candidate)
        rollout.compared += 1
        self.m.compared.labels(rollout.model, version).inc()
        if difference is not None:
            rollout.abs_difference_sum += difference
            rollout.abs_difference_n += 1
            self.m.abs_difference.labels(rollout.model, version).inc(difference)
        if agreed is not None:
            rollout.agreement_n += 1
            rollout.agreed += agreed
            if agreed:
                self.m.agreed.labels(rollout.model, version).inc()
