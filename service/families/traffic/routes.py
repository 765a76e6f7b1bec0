"""The traffic routes: `POST /traffic/forecast`, `GET /traffic/sensors`, `POST /traffic/observations`.

Forecasts: readings + timestamps -> features (families/traffic/preprocessing.py) -> batcher -> mph. Everything
model-specific (sensor ids and order, scaler, features, step length, horizon) comes from the served version's
manifest (`families.traffic.contract.Preprocessing`); nothing is hard-coded here. The event loop only routes:
the body is parsed, checked, turned into features and the response rendered on the work pool (every check
linear in the request size), and bodies larger than any valid request to the served model are refused before
parsing.

Observations: actual readings as they arrive, scored against the forecasts served for their times
(service/families/traffic/quality.py). They move the live error metrics and the "worse than naive" alert, so writing
them needs the admin bearer token (as gallery enrolment does; without a configured token the route is off).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Response
from pydantic_core import to_json

from families.traffic.contract import INPUT, OUTPUT, Preprocessing
from families.traffic.preprocessing import MAX_TIMESTAMP, MIN_TIMESTAMP, build_features
from service.errors import InvalidInput
from service.families.traffic.quality import OUTCOMES, ForecastStore
from service.families.traffic.schemas import (
    MAX_JSON_VALUES,
    MAX_OBSERVATION_STEPS,
    MAX_SPEED,
    MAX_WINDOWS,
    Forecast,
    ForecastRequest,
    ForecastResponse,
    ForecastWindow,
    ObservationRequest,
    ObservationResponse,
    ObservationWindow,
    SensorsResponse,
)
from service.http.auth import require_admin
from service.http.call import Call, task_call
from service.http.openapi import json_body_openapi

if TYPE_CHECKING:
    from service.models.version import LoadedVersion


@dataclass(frozen=True)
class TrafficState:
    """What a loaded traffic version serves with (built once by the plug-in's `prepare`)."""

    preprocessing: Preprocessing
    store: ForecastStore  # the forecasts it served, kept for scoring against observations

    @property
    def max_json_values(self) -> int:
        """The most JSON values (commas + 1) a valid forecast request to this model can hold, with 2x headroom
        for commas inside ids: per window the ids, one row of `input_steps` readings per sensor, the
        timestamps, the keys."""
        pre = self.preprocessing
        per_window = len(pre.sensor_ids) * (pre.input_steps + 1) + pre.input_steps + 8
        return min(2 * MAX_WINDOWS * per_window + 64, MAX_JSON_VALUES)

    @property
    def max_observation_values(self) -> int:
        """The same bound for an observations body (windows of up to MAX_OBSERVATION_STEPS readings), under the
        same absolute cap: a large sensor set must not let 4.5M values through to be parsed and then refused."""
        per_window = len(self.preprocessing.sensor_ids) * (MAX_OBSERVATION_STEPS + 1) + MAX_OBSERVATION_STEPS + 8
        return min(2 * MAX_WINDOWS * per_window + 64, MAX_JSON_VALUES)


TrafficCall = Annotated[Call[TrafficState], Depends(task_call("traffic"))]
router = APIRouter(prefix="/traffic", tags=["traffic"])


def _fail(window: int, field: str, message: str, **details: Any) -> InvalidInput:
    return InvalidInput(f"windows[{window}].{field}: {message}", details={"window": window, "field": field, **details})


def _wall_clock(value: datetime) -> np.datetime64:
    """Local wall-clock time as given (an offset is not converted: time-of-day is the sensors' local time)."""
    return np.datetime64(value.replace(tzinfo=None), "ns")


# ---- forecasts ------------------------------------------------------------------------------------------

@dataclass
class PreparedWindow:
    order: np.ndarray  # request row i -> model sensor index
    speeds: np.ndarray  # (T, N) model order, 0 = missing
    stamps: np.ndarray  # (T,) datetime64[ns]
    last: datetime


def prepare_window(i: int, window: ForecastWindow, pre: Preprocessing) -> PreparedWindow:
    """Check one window against the model's sensor set and step grid; 422 naming the problem otherwise."""
    n, steps = len(pre.sensor_ids), pre.input_steps
    ids = window.sensor_ids
    if len(window.values) != len(ids):
        raise _fail(i, "values", f"has {len(window.values)} rows but sensor_ids has {len(ids)}; one row per sensor")
    unknown = [s for s in ids if s not in pre.index]
    if unknown:
        raise _fail(i, "sensor_ids", f"unknown sensor id(s) {unknown[:10]}; this model serves {n} sensors "
                    "(GET /traffic/sensors lists them)", unknown=unknown[:100])
    counts = Counter(ids)  # linear: 20,000 copies of one id must not cost 20,000^2 comparisons
    if len(counts) != len(ids):
        dupes = sorted(s for s, c in counts.items() if c > 1)
        raise _fail(i, "sensor_ids", f"duplicate sensor id(s) {dupes[:10]}", duplicates=dupes[:100])
    if len(ids) != n:
        absent = [s for s in pre.sensor_ids if s not in counts]
        raise _fail(i, "sensor_ids", f"got {len(ids)} sensors, the model needs all {n}; missing {absent[:10]} "
                    "(send 0 or null readings for sensors without data)", missing=absent[:100])
    for row, readings in enumerate(window.values):
        if len(readings) != steps:
            raise _fail(i, f"values[{row}]", f"sensor {ids[row]!r} has {len(readings)} readings, expected {steps} "
                        f"(the last {steps} steps, oldest first)", sensor=ids[row])
    raw = np.array([[0.0 if v is None else v for v in readings] for readings in window.values], dtype=np.float64)
    bad = ~np.isfinite(raw)
    if bad.any():
        row, step = (int(a) for a in np.argwhere(bad)[0])
        raise _fail(i, f"values[{row}][{step}]", f"sensor {ids[row]!r} has a non-finite reading (NaN/inf); "
                    "use null or 0 for missing", sensor=ids[row], step=step)
    out_of_range = (raw < 0) | (raw > MAX_SPEED)
    if out_of_range.any():
        row, step = (int(a) for a in np.argwhere(out_of_range)[0])
        raise _fail(i, f"values[{row}][{step}]", f"sensor {ids[row]!r} reading {raw[row, step]} is outside "
                    f"[0, {MAX_SPEED:g}] mph", sensor=ids[row], step=step)
    last = _newest_reading(i, window, pre)
    stamps = _wall_clock(last) + (np.arange(-(steps - 1), 1) * np.timedelta64(pre.step_seconds, "s"))
    order = np.fromiter((pre.index[s] for s in ids), dtype=np.int64, count=len(ids))
    speeds = np.zeros((steps, n), dtype=np.float64)
    speeds[:, order] = raw.T
    return PreparedWindow(order=order, speeds=speeds, stamps=stamps, last=last)


def _newest_reading(i: int, window: ForecastWindow, pre: Preprocessing) -> datetime:
    """The time of the window's newest reading, its timestamps checked against the model's step grid."""
    steps, step = pre.input_steps, timedelta(seconds=pre.step_seconds)
    if window.timestamps is not None:
        stamps_in = window.timestamps
        if len(stamps_in) != steps:
            raise _fail(i, "timestamps", f"has {len(stamps_in)} entries, expected {steps} (one per reading)")
        if len({s.tzinfo is None for s in stamps_in}) > 1:
            raise _fail(i, "timestamps", "mixes timestamps with and without a UTC offset")
        for k in range(1, steps):
            if stamps_in[k] <= stamps_in[k - 1]:
                raise _fail(i, "timestamps", f"not strictly increasing: [{k}] {stamps_in[k].isoformat()} <= "
                            f"[{k - 1}] {stamps_in[k - 1].isoformat()}", index=k)
        for k in range(1, steps):
            delta = stamps_in[k] - stamps_in[k - 1]
            if delta != step:
                raise _fail(i, "timestamps", f"[{k - 1}] -> [{k}] is {delta.total_seconds():g} s apart; the "
                            f"model's step is {pre.step_seconds} s", index=k)
        last = stamps_in[-1]
    else:  # the schema guarantees exactly one of the two
        last = window.last_timestamp  # type: ignore[assignment]
    _check_time_range(i, "timestamps" if window.timestamps is not None else "last_timestamp", last, pre)
    return last


def _check_time_range(i: int, field: str, last: datetime, pre: Preprocessing) -> None:
    """The window's readings and its forecast horizon must lie in [MIN_TIMESTAMP, MAX_TIMESTAMP]; compared as
    wall-clock times (as the features are) without computing anything that could overflow."""
    step = timedelta(seconds=pre.step_seconds)
    earliest = MIN_TIMESTAMP + step * (pre.input_steps - 1)
    latest = MAX_TIMESTAMP - step * pre.horizon
    wall = last.replace(tzinfo=None)
    if not earliest <= wall <= latest:
        raise _fail(i, field, f"newest reading {last.isoformat()} is outside the supported range: the "
                    f"{pre.input_steps} readings and the {pre.horizon}-step forecast must lie within "
                    f"{MIN_TIMESTAMP.isoformat()} .. {MAX_TIMESTAMP.isoformat()}, so the newest reading must "
                    f"be between {earliest.isoformat()} and {latest.isoformat()}",
                    min=earliest.isoformat(), max=latest.isoformat())


def features_for(prepared: list[PreparedWindow], pre: Preprocessing) -> np.ndarray:
    speeds = np.stack([p.speeds for p in prepared])
    stamps = np.stack([p.stamps for p in prepared])
    return build_features(speeds, stamps, pre.scaler, pre.use_time_of_day, pre.use_day_of_week)


def to_forecast(window: ForecastWindow, prepared: PreparedWindow, y: np.ndarray, pre: Preprocessing) -> Forecast:
    """y (horizon, N, 1) in model order -> per requested sensor, in request order."""
    step = timedelta(seconds=pre.step_seconds)
    per_sensor = y[:, prepared.order, 0].T.astype(np.float64)
    return Forecast(
        id=window.id,
        timestamps=[prepared.last + step * (h + 1) for h in range(pre.horizon)],
        sensor_ids=window.sensor_ids,
        values=per_sensor.tolist(),
    )


def prepare_request(body: ForecastRequest, pre: Preprocessing) -> tuple[list[PreparedWindow], np.ndarray]:
    """Every window checked, and the model's features (runs on the work pool)."""
    prepared = [prepare_window(i, w, pre) for i, w in enumerate(body.windows)]
    return prepared, features_for(prepared, pre)


def render_forecast(served: LoadedVersion, body: ForecastRequest, prepared: list[PreparedWindow], y: np.ndarray,
                    state: TrafficState) -> bytes:
    """The JSON response body, after keeping the forecasts for scoring against observations (runs on the work
    pool: request-sized serialisation stays off the loop)."""
    pre = state.preprocessing
    origins = np.array([_wall_clock(p.last) for p in prepared], dtype="datetime64[ns]").astype(np.int64)
    state.store.remember(origins, np.stack([p.speeds for p in prepared]), y)
    response = ForecastResponse(
        model=served.name, version=served.version, step_seconds=pre.step_seconds, horizon=pre.horizon,
        forecasts=[to_forecast(w, p, y[k], pre) for k, (w, p) in enumerate(zip(body.windows, prepared, strict=True))],
    )
    return to_json(response)


# ---- observations ---------------------------------------------------------------------------------------

def window_arrays(i: int, window: ObservationWindow, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(T,) int64 ns wall-clock times and (T, N) readings in model order (NaN = sensor not sent); 422 naming
    the field otherwise. Every check is linear in the window's size."""
    ids = window.sensor_ids
    if len(window.values) != len(ids):
        raise _fail(i, "values", f"has {len(window.values)} rows but sensor_ids has {len(ids)}; one row per sensor")
    unknown = [s for s in ids if s not in pre.index]
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
    stamps = _stamps(i, window, steps, pre)
    actual = np.full((steps, len(pre.sensor_ids)), np.nan)
    actual[:, [pre.index[s] for s in ids]] = raw.T
    return stamps, actual


def _stamps(i: int, window: ObservationWindow, steps: int, pre: Preprocessing) -> np.ndarray:
    """(steps,) int64 ns wall-clock times of the window's readings, checked against the step grid and range."""
    step = timedelta(seconds=pre.step_seconds)
    if window.timestamps is not None:
        given = window.timestamps
        if len({s.tzinfo is None for s in given}) > 1:
            raise _fail(i, "timestamps", "mixes timestamps with and without a UTC offset")
        for k in range(1, steps):
            if given[k] - given[k - 1] != step:
                raise _fail(i, "timestamps", f"[{k - 1}] -> [{k}] is not one model step ({pre.step_seconds} s) "
                            "apart", index=k)
        last: datetime = given[-1]
    else:
        last = window.last_timestamp  # type: ignore[assignment]
    wall = last.replace(tzinfo=None)  # compared without arithmetic on `last`, which could overflow
    if not MIN_TIMESTAMP + step * (steps - 1) <= wall <= MAX_TIMESTAMP:
        raise _fail(i, "timestamps" if window.timestamps is not None else "last_timestamp",
                    f"readings must lie within {MIN_TIMESTAMP.isoformat()} .. {MAX_TIMESTAMP.isoformat()}")
    origin = _wall_clock(last).astype(np.int64)
    return origin + (np.arange(-(steps - 1), 1, dtype=np.int64) * pre.step_seconds * 1_000_000_000)


def score_request(body: ObservationRequest, state: TrafficState) -> dict[str, int]:
    """Every window checked first (a bad one scores nothing), then scored (runs on the work pool)."""
    arrays = [window_arrays(i, w, state.preprocessing) for i, w in enumerate(body.windows)]
    outcomes: Counter = Counter()
    for stamps, actual in arrays:
        outcomes.update(state.store.score(stamps, actual).outcomes)
    return {k: int(outcomes[k]) for k in OUTCOMES}


# ---- routes ---------------------------------------------------------------------------------------------

@router.post("/forecast", response_model=ForecastResponse, openapi_extra=json_body_openapi(ForecastRequest))
async def forecast(call: TrafficCall) -> Response:
    """Forecast the next `horizon` steps (12 x 5 min) of every sensor from its last 12 readings.

    One request may hold several windows (e.g. several points in time); they are batched together with
    other requests by the model's dynamic batcher. Missing readings: null or 0. The readings and the
    forecast must lie in the supported time range (see `timestamps`). A body with more values than any
    valid request to the served model can hold (64 windows of its sensors x readings) gets 413.
    """
    body = await call.json(ForecastRequest, "traffic forecast request", max_values=call.state.max_json_values)
    prepared, x = await call.work(prepare_request, body, call.state.preprocessing, what="traffic preprocessing")
    outputs = await call.infer({INPUT: x})
    return await call.respond(render_forecast, call.version, body, prepared, outputs[OUTPUT], call.state,
                              what="traffic response")


@router.get("/sensors", response_model=SensorsResponse)
async def sensors(call: TrafficCall) -> SensorsResponse:
    """The served version's sensor ids (the set every forecast window must cover) and its time grid."""
    pre = call.state.preprocessing
    return SensorsResponse(model=call.version.name, version=call.version.version, sensor_ids=pre.sensor_ids,
                           step_seconds=pre.step_seconds, input_steps=pre.input_steps, horizon=pre.horizon)


# A write to the quality metrics (and so to alerts): admin token, checked before the body is read.
@router.post("/observations", response_model=ObservationResponse, dependencies=[Depends(require_admin)],
             openapi_extra=json_body_openapi(ObservationRequest))
async def observations(call: TrafficCall) -> dict[str, Any]:
    """Actual readings (ground truth) for times the service forecast: scored against the kept forecasts
    of the version (default: the served one) into the `quality_forecast_*` metrics (MAE / RMSE / MAPE
    per horizon step, beside the last-value baseline). Late, duplicate and unmatched readings are
    counted in the answer and in `quality_observations_total`, not refused.

    Needs the admin bearer token (`Authorization: Bearer <SERVICE_ADMIN_TOKEN>`): 401 without it, 403 with
    a wrong one, 404 when the server has no token configured. A body with more values than a valid request
    can hold (at most 4,000,000) gets 413 before it is parsed."""
    body = await call.json(ObservationRequest, "traffic observations", max_values=call.state.max_observation_values)
    counts = await call.work(score_request, body, call.state, what="scoring traffic observations")
    return call.envelope(**counts)
