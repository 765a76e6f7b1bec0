"""Running one batch and answering its requests: on a worker thread (one per model instance) or, when the
measured estimate says it is cheaper than the thread hop, on the event loop. When a batch of several
requests fails, each runs again alone, so that one bad input fails only its own request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic

from service.batching.items import P, R, _Instance, _Item
from service.batching.observer import BatchObserver
from service.batching.stats import ComputePhases, PhaseStats, QueueStats
from service.errors import InferenceFailed, ServiceError, redact_paths

log = logging.getLogger(__name__)


class BatchExecution(Generic[P, R]):
    """The execution half of `DynamicBatcher` (service/batching/batcher.py), which owns the state it reads."""

    _observer: BatchObserver
    _name: str
    _instances: list[_Instance[P, R]]
    _cost: Callable[[P], int] | None
    _compute_ewma_s: float
    _s_per_unit: float | None
    inline_below_s: float
    stats: QueueStats

    def _units(self, batch: list[_Item[P]]) -> int:
        return sum(self._cost(i.payload) for i in batch) if self._cost is not None else 0

    def _runs_inline(self, batch: list[_Item[P]]) -> bool:
        """Cheap enough to compute on the loop: one instance, and a measured cost estimate under the bound."""
        if self.inline_below_s <= 0 or self._s_per_unit is None or len(self._instances) != 1:
            return False
        return self._s_per_unit * self._units(batch) < self.inline_below_s

    async def _execute(self, batch: list[_Item[P]], instance: _Instance[P, R],
                       loop: asyncio.AbstractEventLoop) -> None:
        """Run one batch on a worker thread and answer its requests."""
        self._observer.batch(sum(i.rows for i in batch))
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
        self._observer.batch(sum(i.rows for i in batch))
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
        self._observer.computed(elapsed_s)
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
        self._observer.outcome("error")
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
                self._observer.outcome("error")
                self.stats.fail.add(now - item.enqueued_at)
                item.future.set_exception(result)
            else:
                self._observer.outcome("success")
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
