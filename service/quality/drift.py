"""Input drift: live input statistics beside the training statistics shipped in the manifest.

Export writes `preprocessing["training_statistics"] = {name: {"mean": m, "std": s}}`. The service exports
them as gauges and, per request, adds the live values to counters (`quality_input_statistic_sum_total` /
`_count_total`), so that Prometheus computes the drift over any window:

    drift = (rate(sum) / rate(count) - training_mean) / training_std

i.e. how far the live mean has moved, in training standard deviations. A manifest without the key (older
exports) loads as before; its drift series are simply absent.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from service.metrics import DriftMetrics

STATISTICS_KEY = "training_statistics"
MIN_STD = 0.01  # a statistic constant in training (e.g. no missing values at all) still gives a finite drift


@dataclass
class _Series:
    sum: Counter
    count: Counter


class DriftRecorder:
    """The live side of one model version's statistics; `observe` is thread-safe (prometheus counters)."""

    def __init__(self, metrics: DriftMetrics, model: str, version: str, training: dict[str, Any]) -> None:
        self._series: dict[str, _Series] = {}
        for name, stats in training.items():
            labels = (model, version, name)
            mean, std = float(stats["mean"]), max(float(stats.get("std", 0.0)), MIN_STD)
            if not (math.isfinite(mean) and math.isfinite(std)):
                continue
            metrics.training_mean.labels(*labels).set(mean)
            metrics.training_std.labels(*labels).set(std)
            self._series[name] = _Series(metrics.input_sum.labels(*labels), metrics.input_count.labels(*labels))

    @classmethod
    def from_preprocessing(cls, metrics: DriftMetrics, model: str, version: str,
                           preprocessing: dict[str, Any]) -> DriftRecorder:
        training = preprocessing.get(STATISTICS_KEY)
        return cls(metrics, model, version, training if isinstance(training, dict) else {})

    @property
    def statistics(self) -> list[str]:
        return sorted(self._series)

    def observe(self, name: str, total: float, count: float) -> None:
        """Add `count` live values summing to `total` (ignored for a statistic training did not ship)."""
        series = self._series.get(name)
        if series is None or count <= 0 or not math.isfinite(total):
            return
        series.sum.inc(total)
        series.count.inc(count)


class RecentRatio:
    """Share of True among the last `size` events, exported to a gauge (bounded memory, thread-safe)."""

    def __init__(self, gauge: Gauge, size: int) -> None:
        self._gauge = gauge
        self._events: deque[bool] = deque(maxlen=size)
        self._hits = 0
        self._lock = threading.Lock()

    def add(self, flags: list[bool]) -> float:
        with self._lock:
            for flag in flags:
                if len(self._events) == self._events.maxlen:
                    self._hits -= self._events[0]
                self._events.append(flag)
                self._hits += flag
            ratio = self._hits / len(self._events) if self._events else 0.0
        self._gauge.set(ratio)
        return ratio
