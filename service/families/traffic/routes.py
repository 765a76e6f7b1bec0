"""`POST /traffic/forecast`: readings + timestamps -> features (shared preprocessing) -> batcher -> mph.

Everything model-specific (sensor ids and order, scaler, features, step length, horizon) comes from the
served version's manifest `preprocessing`; nothing is hard-coded here. The event loop only routes: the body
is parsed, checked, turned into features and the response rendered on the work pool (every check linear in
the request size), and bodies larger than any valid request to the served model are refused before parsing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from pydantic_core import to_json

from families.traffic.preprocessing import (
    FEATURE_DAY_OF_WEEK,
    FEATURE_SPEED,
    FEATURE_TIME_OF_DAY,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    Scaler,
    build_features,
)
from service.dataplane import (
    json_body_openapi,
    parse_json_body,
    request_context,
    resolve_version,
    workpool_of,
)
from service.errors import InvalidInput
from service.families.traffic.quality import ForecastStore, store_for
from service.families.traffic.schemas import (
    MAX_WINDOWS,
    Forecast,
    ForecastRequest,
    ForecastResponse,
    ForecastWindow,
    SensorsResponse,
)

if TYPE_CHECKING:
    from service.repository import LoadedVersion

STATE_KEY = "traffic"
MAX_SPEED = 250.0  # mph; anything above is a unit or data error, not a reading
MAX_JSON_VALUES = 4_000_000  # absolute cap per request (~300 MB of parsed JSON), whatever the model's size


@dataclass(frozen=True)
class TrafficSpec:
    """What the manifest says about the model's inputs; built once per loaded version."""

    sensor_ids: list[str]
    index: dict[str, int]
    scaler: Scaler
    use_time_of_day: bool
    use_day_of_week: bool
    step_seconds: int
    input_steps: int
    horizon: int

    @classmethod
    def from_preprocessing(cls, pre: dict[str, Any]) -> TrafficSpec:
        missing = [k for k in ("sensor_ids", "scaler", "features", "step_seconds", "input_steps", "horizon")
                   if k not in pre]
        if missing:
            raise ValueError(f"traffic manifest preprocessing lacks {missing}")
        features = list(pre["features"])
        known = {FEATURE_SPEED, FEATURE_TIME_OF_DAY, FEATURE_DAY_OF_WEEK}
        if not features or features[0] != FEATURE_SPEED or set(features) - known:
            raise ValueError(f"unsupported traffic features {features}")
        sensor_ids = [str(s) for s in pre["sensor_ids"]]
        return cls(
            sensor_ids=sensor_ids,
            index={s: i for i, s in enumerate(sensor_ids)},
            scaler=Scaler(float(pre["scaler"]["mean"]), float(pre["scaler"]["std"])),
            use_time_of_day=FEATURE_TIME_OF_DAY in features,
            use_day_of_week=FEATURE_DAY_OF_WEEK in features,
            step_seconds=int(pre["step_seconds"]),
            input_steps=int(pre["input_steps"]),
            horizon=int(pre["horizon"]),
        )


def max_json_values(spec: TrafficSpec) -> int:
    """The most JSON values (commas + 1) a valid request to this model can hold, with 2x headroom for commas
    inside ids: per window the ids, one row of `input_steps` readings per sensor, the timestamps, the keys."""
    per_window = len(spec.sensor_ids) * (spec.input_steps + 1) + spec.input_steps + 8
    return min(2 * MAX_WINDOWS * per_window + 64, MAX_JSON_VALUES)


def spec_of(version: LoadedVersion) -> TrafficSpec:
    spec = version.state.get(STATE_KEY)
    if spec is None:  # prepare() did not run (e.g. a version loaded before the family existed)
        spec = TrafficSpec.from_preprocessing(version.manifest.preprocessing)
        version.state[STATE_KEY] = spec
    return spec


def _fail(window: int, field: str, message: str, **details: Any) -> InvalidInput:
    return InvalidInput(f"windows[{window}].{field}: {message}", details={"window": window, "field": field, **details})


def _wall_clock(value: datetime) -> np.datetime64:
    """Local wall-clock time as given (an offset is not converted: time-of-day is the sensors' local time)."""
    return np.datetime64(value.replace(tzinfo=None), "ns")


@dataclass
class PreparedWindow:
    order: np.ndarray  # request row i -> model sensor index
    speeds: np.ndarray  # (T, N) model order, 0 = missing
    stamps: np.ndarray  # (T,) datetime64[ns]
    last: datetime


def prepare_window(i: int, window: ForecastWindow, spec: TrafficSpec) -> PreparedWindow:
    """Check one window against the model's sensor set and step grid; 422 naming the problem otherwise."""
    n, steps = len(spec.sensor_ids), spec.input_steps
    ids = window.sensor_ids
    if len(window.values) != len(ids):
        raise _fail(i, "values", f"has {len(window.values)} rows but sensor_ids has {len(ids)}; one row per sensor")
    unknown = [s for s in ids if s not in spec.index]
    if unknown:
        raise _fail(i, "sensor_ids", f"unknown sensor id(s) {unknown[:10]}; this model serves {n} sensors "
                    "(GET /traffic/sensors lists them)", unknown=unknown[:100])
    counts = Counter(ids)  # linear: 20,000 copies of one id must not cost 20,000^2 comparisons
    if len(counts) != len(ids):
        dupes = sorted(s for s, c in counts.items() if c > 1)
        raise _fail(i, "sensor_ids", f"duplicate sensor id(s) {dupes[:10]}", duplicates=dupes[:100])
    if len(ids) != n:
        absent = [s for s in spec.sensor_ids if s not in counts]
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

    step = timedelta(seconds=spec.step_seconds)
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
                            f"model's step is {spec.step_seconds} s", index=k)
        last = stamps_in[-1]
    else:  # the schema guarantees exactly one of the two
        last = window.last_timestamp  # type: ignore[assignment]
    _check_time_range(i, "timestamps" if window.timestamps is not None else "last_timestamp", last, spec)
    stamps = _wall_clock(last) + (np.arange(-(steps - 1), 1) * np.timedelta64(spec.step_seconds, "s"))
    order = np.fromiter((spec.index[s] for s in ids), dtype=np.int64, count=len(ids))
    speeds = np.zeros((steps, n), dtype=np.float64)
    speeds[:, order] = raw.T
    return PreparedWindow(order=order, speeds=speeds, stamps=stamps, last=last)


def _check_time_range(i: int, field: str, last: datetime, spec: TrafficSpec) -> None:
    """The window's readings and its forecast horizon must lie in [MIN_TIMESTAMP, MAX_TIMESTAMP]; compared as
    wall-clock times (as the features are) without computing anything that could overflow."""
    step = timedelta(seconds=spec.step_seconds)
    earliest = MIN_TIMESTAMP + step * (spec.input_steps - 1)
    latest = MAX_TIMESTAMP - step * spec.horizon
    wall = last.replace(tzinfo=None)
    if not earliest <= wall <= latest:
        raise _fail(i, field, f"newest reading {last.isoformat()} is outside the supported range: the "
                    f"{spec.input_steps} readings and the {spec.horizon}-step forecast must lie within "
                    f"{MIN_TIMESTAMP.isoformat()} .. {MAX_TIMESTAMP.isoformat()}, so the newest reading must "
                    f"be between {earliest.isoformat()} and {latest.isoformat()}",
                    min=earliest.isoformat(), max=latest.isoformat())


def features_for(prepared: list[PreparedWindow], spec: TrafficSpec) -> np.ndarray:
    speeds = np.stack([p.speeds for p in prepared])
    stamps = np.stack([p.stamps for p in prepared])
    return build_features(speeds, stamps, spec.scaler, spec.use_time_of_day, spec.use_day_of_week)


def to_forecast(window: ForecastWindow, prepared: PreparedWindow, y: np.ndarray, spec: TrafficSpec) -> Forecast:
    """y (horizon, N, 1) in model order -> per requested sensor, in request order."""
    step = timedelta(seconds=spec.step_seconds)
    per_sensor = y[:, prepared.order, 0].T.astype(np.float64)
    return Forecast(
        id=window.id,
        timestamps=[prepared.last + step * (h + 1) for h in range(spec.horizon)],
        sensor_ids=window.sensor_ids,
        values=per_sensor.tolist(),
    )


def prepare_request(body: ForecastRequest, spec: TrafficSpec) -> tuple[list[PreparedWindow], np.ndarray]:
    """Every window checked, and the model's features (runs on the work pool)."""
    prepared = [prepare_window(i, w, spec) for i, w in enumerate(body.windows)]
    return prepared, features_for(prepared, spec)


def render_forecast(served: LoadedVersion, body: ForecastRequest, prepared: list[PreparedWindow], y: np.ndarray,
                    spec: TrafficSpec) -> bytes:
    """The JSON response body (runs on the work pool: request-sized serialisation stays off the loop)."""
    response = ForecastResponse(
        model=served.name, version=served.version, step_seconds=spec.step_seconds, horizon=spec.horizon,
        forecasts=[to_forecast(w, p, y[k], spec) for k, (w, p) in enumerate(zip(body.windows, prepared, strict=True))],
    )
    return to_json(response)


def render_and_remember(served: LoadedVersion, body: ForecastRequest, prepared: list[PreparedWindow],
                        y: np.ndarray, spec: TrafficSpec, store: ForecastStore) -> bytes:
    """`render_forecast`, after keeping the forecasts for scoring against observations (quality.py)."""
    origins = np.array([_wall_clock(p.last) for p in prepared], dtype="datetime64[ns]").astype(np.int64)
    store.remember(origins, np.stack([p.speeds for p in prepared]), y)
    return render_forecast(served, body, prepared, y, spec)


def build_router() -> APIRouter:
    router = APIRouter(prefix="/traffic", tags=["traffic"])

    @router.post("/forecast", response_model=ForecastResponse, openapi_extra=json_body_openapi(ForecastRequest))
    async def forecast(request: Request, model: str | None = Query(None),
                       version: int | None = Query(None)) -> Response:
        """Forecast the next `horizon` steps (12 x 5 min) of every sensor from its last 12 readings.

        One request may hold several windows (e.g. several points in time); they are batched together with
        other requests by the model's dynamic batcher. Missing readings: null or 0. The readings and the
        forecast must lie in the supported time range (see `timestamps`). A body with more values than any
        valid request to the served model can hold (64 windows of its sensors x readings) gets 413.
        """
        served = resolve_version(request, family="traffic", model=model, version=version)
        spec = spec_of(served)
        body = await parse_json_body(request, ForecastRequest, "traffic forecast request",
                                     max_values=max_json_values(spec))
        ctx = request_context(request)
        pool = workpool_of(request)
        prepared, x = await pool.run(prepare_request, body, spec, ctx=ctx, what="traffic preprocessing")
        outputs = await served.infer({"x": x}, ctx=ctx)
        store = store_for(request, served, spec)
        content = await pool.run(render_and_remember, served, body, prepared, outputs["y"], spec, store,
                                 ctx=ctx, what="traffic response")
        return Response(content, media_type="application/json")

    @router.get("/sensors", response_model=SensorsResponse)
    async def sensors(request: Request, model: str | None = Query(None),
                      version: int | None = Query(None)) -> SensorsResponse:
        """The served version's sensor ids (the set every forecast window must cover) and its time grid."""
        served = resolve_version(request, family="traffic", model=model, version=version)
        spec = spec_of(served)
        return SensorsResponse(
            model=served.name, version=served.version, sensor_ids=spec.sensor_ids, step_seconds=spec.step_seconds,
            input_steps=spec.input_steps, horizon=spec.horizon,
        )

    from service.families.traffic.observations import add_observation_route  # imports this module

    add_observation_route(router)
    return router
