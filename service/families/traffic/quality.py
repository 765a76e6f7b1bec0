"""Traffic forecast error from ground truth: a bounded store of the forecasts a version served, scored as
observations (`POST /traffic/observations`) arrive for their target times.

- A forecast is keyed by its newest input reading's wall-clock time (the forecast origin, as the features
  see it); a newer forecast for the same origin replaces the older one. The store is bounded by count,
  memory and age (settings `quality_forecasts`, `quality_forecasts_mb`, `quality_forecast_ttl_s`);
  the oldest forecasts go first.
- An observed reading at time t is scored against every kept forecast whose origin is t - h * step
  (h = 1..horizon): model and last-value baseline (the sensor's newest non-missing input reading) on the
  same points, so that "skill vs naive" compares like with like. Each (forecast, step, sensor) is scored
  once: a repeat is a `duplicate`; a reading no kept forecast targets is `late` when forecasts that could
  have targeted it were already evicted, else `unmatched`; 0 / null readings are `missing`. None is an error.
- Errors go to counters per horizon step and predictor (docs/quality.md has the PromQL for MAE/RMSE/MAPE).
All methods run on the work pool (numpy over request-sized arrays) under one lock per store.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from families.traffic.contract import STAT_MISSING, STAT_SPEED, Preprocessing
from families.traffic.preprocessing import NULL_VALUE
from service.quality.drift import DriftRecorder

if TYPE_CHECKING:
    from service.families.traffic.metrics import TrafficMetrics
    from service.families.traffic.settings import TrafficSettings
    from service.metrics import DriftMetrics
    from service.models.version import LoadedVersion

PREDICTORS = ("model", "last_value")
OUTCOMES = ("matched", "duplicate", "late", "unmatched", "missing")


@dataclass
class KeptForecast:
    y: np.ndarray  # (H, N) float32 mph, model sensor order
    last_value: np.ndarray  # (N,) float32 newest non-missing input reading; NaN when the window had none
    scored: np.ndarray  # (H, N) bool
    kept_at: float  # time.monotonic()


@dataclass
class ScoreTotals:
    """Per horizon step (index h-1) and predictor: sums of |e|, e^2, |e|/actual and the point count."""

    abs: np.ndarray
    sq: np.ndarray
    pct: np.ndarray
    points: np.ndarray
    outcomes: Counter = field(default_factory=Counter)

    @classmethod
    def zeros(cls, horizon: int) -> ScoreTotals:
        shape = (len(PREDICTORS), horizon)
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape, np.int64))


class ForecastStore:
    def __init__(self, metrics: TrafficMetrics, model: str, version: str, *, horizon: int, sensors: int,
                 step_seconds: int, max_forecasts: int, max_bytes: float, ttl_s: float,
                 drift: DriftRecorder | None = None) -> None:
        self.horizon, self.sensors = horizon, sensors
        self.step_ns = step_seconds * 1_000_000_000
        per_forecast = horizon * sensors * 5 + sensors * 4 + 200  # y float32 + scored bool + last + overhead
        self.capacity = int(min(max_forecasts, max_bytes // per_forecast))
        self.ttl_s = ttl_s
        self.drift = drift
        self._items: OrderedDict[int, KeptForecast] = OrderedDict()  # origin (ns, wall clock) -> forecast
        self._evicted_until: int | None = None  # newest target time of an evicted forecast
        self._lock = threading.Lock()
        self._m = metrics
        self._labels = (model, version)
        self._stored = metrics.forecasts_stored.labels(model, version)

    def __len__(self) -> int:
        return len(self._items)

    # ---- forecasts -------------------------------------------------------------------------------------
    def remember(self, origins: np.ndarray, speeds: np.ndarray, y: np.ndarray) -> None:
        """origins (W,) int64 ns; speeds (W, T, N) the inputs (0 = missing); y (W, H, N, 1) the forecasts."""
        self._record_inputs(speeds)
        if self.capacity <= 0:
            return
        last = last_non_missing(speeds)
        now = time.monotonic()
        with self._lock:
            for w, origin in enumerate(origins.tolist()):
                self._items.pop(origin, None)  # a re-forecast of the same origin replaces it, at the end
                self._items[origin] = KeptForecast(np.array(y[w, :, :, 0], np.float32), last[w],
                                                   np.zeros((self.horizon, self.sensors), bool), now)
            self._evict(now)
            self._stored.set(len(self._items))

    def _record_inputs(self, speeds: np.ndarray) -> None:
        if self.drift is None:
            return
        present = speeds != NULL_VALUE
        self.drift.observe(STAT_MISSING, float(speeds.size - np.count_nonzero(present)), speeds.size)
        self.drift.observe(STAT_SPEED, float(speeds[present].sum()), int(np.count_nonzero(present)))

    def _evict(self, now: float) -> None:
        while self._items:
            origin, oldest = next(iter(self._items.items()))
            if len(self._items) <= self.capacity and now - oldest.kept_at <= self.ttl_s:
                break
            del self._items[origin]
            newest_target = origin + self.horizon * self.step_ns
            self._evicted_until = max(self._evicted_until or newest_target, newest_target)

    # ---- observations ----------------------------------------------------------------------------------
    def score(self, stamps: np.ndarray, actual: np.ndarray) -> ScoreTotals:
        """stamps (T,) int64 ns; actual (T, N) mph in model order, NaN = sensor not in the request, 0 = missing.
        Adds the errors to the metrics and returns the totals (outcomes count observed readings)."""
        totals = ScoreTotals.zeros(self.horizon)
        with self._lock:
            self._evict(time.monotonic())
            self._stored.set(len(self._items))
            for t, stamp in enumerate(stamps.tolist()):
                self._score_step(stamp, actual[t], totals)
        self._export(totals)
        return totals

    def _score_step(self, stamp: int, actual: np.ndarray, totals: ScoreTotals) -> None:
        given = ~np.isnan(actual)
        valid = given & (actual != NULL_VALUE)
        totals.outcomes["missing"] += int(np.count_nonzero(given & ~valid))
        targeted = np.zeros_like(valid)
        fresh = np.zeros_like(valid)
        for h in range(1, self.horizon + 1):
            kept = self._items.get(stamp - h * self.step_ns)
            if kept is None:
                continue
            new = valid & ~kept.scored[h - 1]
            targeted |= valid
            fresh |= new
            kept.scored[h - 1] |= new
            points = new & ~np.isnan(kept.last_value)  # both predictors on the same points
            if points.any():
                self._add_errors(totals, h - 1, actual[points], kept.y[h - 1][points], kept.last_value[points])
        totals.outcomes["matched"] += int(np.count_nonzero(fresh))
        totals.outcomes["duplicate"] += int(np.count_nonzero(targeted & ~fresh))
        orphans = int(np.count_nonzero(valid & ~targeted))
        late = self._evicted_until is not None and stamp <= self._evicted_until
        totals.outcomes["late" if late else "unmatched"] += orphans

    @staticmethod
    def _add_errors(totals: ScoreTotals, step: int, actual: np.ndarray, forecast: np.ndarray,
                    naive: np.ndarray) -> None:
        for p, predicted in enumerate((forecast, naive)):
            error = np.abs(predicted.astype(np.float64) - actual)
            totals.abs[p, step] += error.sum()
            totals.sq[p, step] += np.square(error).sum()
            totals.pct[p, step] += (error / actual).sum()
            totals.points[p, step] += error.size

    def _export(self, totals: ScoreTotals) -> None:
        m, (model, version) = self._m, self._labels
        for p, predictor in enumerate(PREDICTORS):
            for step in np.flatnonzero(totals.points[p]).tolist():
                labels = (model, version, str(step + 1), predictor)
                m.forecast_abs_error.labels(*labels).inc(float(totals.abs[p, step]))
                m.forecast_squared_error.labels(*labels).inc(float(totals.sq[p, step]))
                m.forecast_abs_pct_error.labels(*labels).inc(float(totals.pct[p, step]))
                m.forecast_points.labels(*labels).inc(int(totals.points[p, step]))
        for outcome in OUTCOMES:
            if totals.outcomes[outcome]:
                m.observations.labels(model, version, outcome).inc(totals.outcomes[outcome])


def last_non_missing(speeds: np.ndarray) -> np.ndarray:
    """(W, T, N) readings (0 = missing) -> (W, N) the newest non-missing reading, NaN where there is none."""
    present = speeds != NULL_VALUE
    newest = speeds.shape[1] - 1 - np.argmax(present[:, ::-1, :], axis=1)  # (W, N) index of the last present
    values = np.take_along_axis(speeds, newest[:, None, :], axis=1)[:, 0, :].astype(np.float32)
    values[~present.any(axis=1)] = np.nan
    return values


def forecast_store(version: LoadedVersion, pre: Preprocessing, settings: TrafficSettings, metrics: TrafficMetrics,
                   drift: DriftMetrics) -> ForecastStore:
    """The store of a loaded version (its plug-in's `prepare`), bounded by the family's settings, with the
    drift recorder of the manifest's training statistics."""
    model, number = version.name, str(version.version)
    training = {name: stat.model_dump() for name, stat in (pre.training_statistics or {}).items()}
    return ForecastStore(metrics, model, number, horizon=pre.horizon, sensors=len(pre.sensor_ids),
                         step_seconds=pre.step_seconds, max_forecasts=settings.quality_forecasts,
                         max_bytes=settings.quality_forecasts_mb * 1024 * 1024,
                         ttl_s=settings.quality_forecast_ttl_s, drift=DriftRecorder(drift, model, number, training))
