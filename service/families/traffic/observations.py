"""`POST /traffic/observations`: actual readings as they arrive, scored against the forecasts served for
their times (service/families/traffic/quality.py). The window format is `/traffic/forecast`'s, except
that a window may hold any subset of the sensors and any number of steps (1..MAX_OBSERVATION_STEPS)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from families.traffic.preprocessing import MAX_TIMESTAMP, MIN_TIMESTAMP
from service.dataplane import json_body_openapi, parse_json_body, request_context, resolve_version, workpool_of
from service.families.traffic.quality import OUTCOMES, store_for
from service.families.traffic.routes import MAX_SPEED, _fail, _wall_clock, spec_of
from service.families.traffic.schemas import MAX_SENSORS, MAX_WINDOWS

if TYPE_CHECKING:
    from service.families.traffic.quality import ForecastStore
    from service.families.traffic.routes import TrafficSpec

MAX_OBSERVATION_STEPS = 288  # one day of 5-minute readings per window

_EXAMPLE = {"windows": [{"sensor_ids": ["773869", "767541"], "last_timestamp": "2012-06-04T08:05:00",
                         "values": [[45.2, 44.8], [58.1, None]]}]}


class ObservationWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sensor_ids: list[str] = Field(..., min_length=1, max_length=MAX_SENSORS,
                                  description="any subset of the served model's sensors, in any order")
    values: list[list[float | None]] = Field(
        ..., description="per sensor (same order as sensor_ids), the actual readings in mph, oldest first; "
        "null or 0 = missing")
    timestamps: list[datetime] | None = Field(
        None, max_length=MAX_OBSERVATION_STEPS, description="time of each reading (strictly increasing, one "
        f"model step apart; sensors' local wall-clock time, as for forecasts), within {MIN_TIMESTAMP.isoformat()}"
        f" .. {MAX_TIMESTAMP.isoformat()}")
    last_timestamp: datetime | None = Field(None, description="alternative to `timestamps`: the newest reading's time")

    @model_validator(mode="after")
    def _one_time_reference(self) -> ObservationWindow:
        if (self.timestamps is None) == (self.last_timestamp is None):
            raise ValueError("give exactly one of `timestamps` (one per reading) or `last_timestamp`")
        return self


class ObservationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    windows: list[ObservationWindow] = Field(..., min_length=1, max_length=MAX_WINDOWS)


class ObservationResponse(BaseModel):
    model: str
    version: int
    matched: int = Field(description="readings scored against at least one kept forecast")
    duplicate: int = Field(description="readings whose forecasts were already scored")
    late: int = Field(description="readings whose forecasts were evicted (age or size bound) before they came")
    unmatched: int = Field(description="readings no kept forecast targets")
    missing: int = Field(description="0 / null readings")


def max_observation_values(spec: TrafficSpec) -> int:
    """Commas + 1 of the largest valid body, with 2x headroom (as `max_json_values` for forecasts)."""
    per_window = len(spec.sensor_ids) * (MAX_OBSERVATION_STEPS + 1) + MAX_OBSERVATION_STEPS + 8
    return 2 * MAX_WINDOWS * per_window + 64


def window_arrays(i: int, window: ObservationWindow, spec: TrafficSpec) -> tuple[np.ndarray, np.ndarray]:
    """(T,) int64 ns wall-clock times and (T, N) readings in model order (NaN = sensor not sent); 422 naming
    the field otherwise. Every check is linear in the window's size."""
    ids = window.sensor_ids
    if len(window.values) != len(ids):
        raise _fail(i, "values", f"has {len(window.values)} rows but sensor_ids has {len(ids)}; one row per sensor")
    unknown = [s for s in ids if s not in spec.index]
    if unknown:
        raise _fail(i, "sensor_ids", f"unknown sensor id(s) {unknown[:10]}", unknown=unknown[:100])
    counts = Counter(ids)
    if len(counts) != len(ids):
        dupes = sorted(s for s, c in counts.items() if c > 1)
        raise _fail(i, "sensor_ids", f"duplicate sensor id(s) {dupes[:10]}", duplicates=dupes[:100])
    steps = len(window.timestamps) if window.timestamps is not None else len(window.values[0])
    if not 1 <= steps <= MAX_OBSERVATION_STEPS:
        raise _fail(i, "values", f"{steps} readings per sensor; send 1..{MAX_OBSERVATION_STEPS}")
    for row, readings in enumerate(window.values):
        if len(readings) != steps:
            raise _fail(i, f"values[{row}]", f"sensor {ids[row]!r} has {len(readings)} readings, expected {steps}")
    raw = np.array([[0.0 if v is None else v for v in r] for r in window.values], dtype=np.float64)
    bad = ~np.isfinite(raw) | (raw < 0) | (raw > MAX_SPEED)
    if bad.any():
        row, step = (int(a) for a in np.argwhere(bad)[0])
        raise _fail(i, f"values[{row}][{step}]", f"reading {raw[row, step]} is not a speed in [0, {MAX_SPEED:g}] "
                    "mph (null or 0 = missing)", sensor=ids[row], step=step)
    stamps = _stamps(i, window, steps, spec)
    actual = np.full((steps, len(spec.sensor_ids)), np.nan)
    actual[:, [spec.index[s] for s in ids]] = raw.T
    return stamps, actual


def _stamps(i: int, window: ObservationWindow, steps: int, spec: TrafficSpec) -> np.ndarray:
    step = timedelta(seconds=spec.step_seconds)
    if window.timestamps is not None:
        given = window.timestamps
        if len({s.tzinfo is None for s in given}) > 1:
            raise _fail(i, "timestamps", "mixes timestamps with and without a UTC offset")
        for k in range(1, steps):
            if given[k] - given[k - 1] != step:
                raise _fail(i, "timestamps", f"[{k - 1}] -> [{k}] is not one model step ({spec.step_seconds} s) "
                            "apart", index=k)
        last: datetime = given[-1]
    else:
        last = window.last_timestamp  # type: ignore[assignment]
    wall = last.replace(tzinfo=None)  # compared without arithmetic on `last`, which could overflow
    if not MIN_TIMESTAMP + step * (steps - 1) <= wall <= MAX_TIMESTAMP:
        raise _fail(i, "timestamps" if window.timestamps is not None else "last_timestamp",
                    f"readings must lie within {MIN_TIMESTAMP.isoformat()} .. {MAX_TIMESTAMP.isoformat()}")
    origin = _wall_clock(last).astype(np.int64)
    return origin + (np.arange(-(steps - 1), 1, dtype=np.int64) * spec.step_seconds * 1_000_000_000)


def score_request(body: ObservationRequest, spec: TrafficSpec, store: ForecastStore) -> dict[str, int]:
    """Every window checked first (a bad one scores nothing), then scored (runs on the work pool)."""
    arrays = [window_arrays(i, w, spec) for i, w in enumerate(body.windows)]
    outcomes: Counter = Counter()
    for stamps, actual in arrays:
        outcomes.update(store.score(stamps, actual).outcomes)
    return {k: int(outcomes[k]) for k in OUTCOMES}


def add_observation_route(router: APIRouter) -> None:
    @router.post("/observations", response_model=ObservationResponse,
                 openapi_extra=json_body_openapi(ObservationRequest))
    async def observations(request: Request, model: str | None = Query(None),
                           version: int | None = Query(None)) -> dict[str, Any]:
        """Actual readings (ground truth) for times the service forecast: scored against the kept forecasts
        of the version (default: the served one) into the `quality_forecast_*` metrics (MAE / RMSE / MAPE
        per horizon step, beside the last-value baseline). Late, duplicate and unmatched readings are
        counted in the answer and in `quality_observations_total`, not refused."""
        served = resolve_version(request, family="traffic", model=model, version=version)
        spec = spec_of(served)
        body = await parse_json_body(request, ObservationRequest, "traffic observations",
                                     max_values=max_observation_values(spec))
        store = store_for(request, served, spec)
        counts = await workpool_of(request).run(score_request, body, spec, store, ctx=request_context(request),
                                                what="scoring traffic observations")
        return {"model": served.name, "version": served.version, **counts}

