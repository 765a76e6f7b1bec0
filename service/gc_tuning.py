"""Keep the cyclic garbage collector off the latency tail.

A full collection walks every tracked object: with torch, onnxruntime, FastAPI and the loaded models that is
millions of objects and tens of milliseconds with the GIL held, so every request in flight stalls (the p99
of the HTTP-bound tiny model was 157-180 ms for a 6 ms p50). Two measures:

- `freeze()` after start-up and after each model load: everything alive then (imported modules, loaded
  sessions, manifests) moves to the permanent generation, which collections never walk. Frozen objects are
  still freed by reference counting; only cycles among them stay until `gc.unfreeze()` (a model version
  that is unloaded is released by refcounts: runtimes and batchers hold no cycles that need the GC).
- thresholds (default 2000, 25, 1000 instead of 700, 10, 10): measured on the tiny model at concurrency 64,
  a young collection then pauses ~1 ms, a middle one ~13 ms every 25 of those, and full collections (tens of
  ms even over the unfrozen rest of the heap) no longer happen under load. A much larger threshold0
  (50000) made each young collection free so much cyclic request garbage at once that it paused 50-100 ms.

`GcPauses` records every collection's pause (gc.callbacks) into a Prometheus histogram
`gc_pause_seconds{generation}`, so a regression shows on the dashboard. The callback only does integer
and float arithmetic on preallocated lists: it can run inside any allocation, in any thread, including one
that holds a prometheus_client lock, so it must not take one itself; the histogram is built at scrape time.
"""

from __future__ import annotations

import bisect
import gc
import logging
import time
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Seconds: young collections take tens of microseconds, a full one over the unfrozen heap tens of ms.
PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def parse_thresholds(text: str) -> tuple[int, int, int]:
    """"2000,25,1000" -> (2000, 25, 1000); ValueError naming the setting otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) == 0:
        raise ValueError(f"SERVICE_GC_THRESHOLDS must be three non-negative integers 'g0,g1,g2' with g0 > 0, "
                         f"got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def apply_thresholds(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(*thresholds)


def freeze(reason: str) -> None:
    """Collect what is garbage now, then move every surviving object out of the collector's sight."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("gc: froze %d objects after %s in %.0f ms", gc.get_freeze_count(), reason,
             (time.perf_counter() - started) * 1000)


class GcPauses(Collector):
    """gc.callbacks timer + Prometheus collector of `gc_pause_seconds{generation}`."""

    def __init__(self) -> None:
        self._bounds = PAUSE_BUCKETS
        # Per generation: counts per bucket (last = +Inf), sum of seconds; mutated only by the callback.
        self._counts = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(3)]
        self._sums = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._installed = False

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        self._counts[generation][bisect.bisect_left(self._bounds, elapsed)] += 1
        self._sums[generation] += elapsed

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def pauses(self, generation: int) -> tuple[int, float]:
        """(collections, total seconds) of one generation so far."""
        return sum(self._counts[generation]), self._sums[generation]

    def describe(self) -> Iterator[HistogramMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("gc_pause_seconds", "Pause of one cyclic garbage collection.",
                                       labels=["generation"])
        for generation in range(3):
            counts = list(self._counts[generation])  # copy: the callback may run meanwhile
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, self._bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family
