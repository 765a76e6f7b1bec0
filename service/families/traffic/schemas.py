"""Request/response models and limits of the traffic routes (examples appear in the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from families.traffic.preprocessing import MAX_TIMESTAMP, MIN_TIMESTAMP

MAX_WINDOWS = 64  # windows in one request (forecasts or observations)
MAX_SENSORS = 20_000  # sensor ids in one window
MAX_SPEED = 250.0  # mph; anything above is a unit or data error, not a reading
MAX_JSON_VALUES = 4_000_000  # absolute cap per request (~300 MB of parsed JSON), whatever the model's size
MAX_OBSERVATION_STEPS = 288  # one day of 5-minute readings per observation window

# The routes check readings, row lengths and sensor ids themselves (422 naming the window, row and sensor), so the
# pydantic types stay loose; these annotations put the same rules into the OpenAPI document, so that what it
# documents is what the service enforces (issue 26 item 13). Only rules that hold for every served model are
# here; the model's sensor set and step count are in GET /traffic/sensors.
Reading = Annotated[float | None, WithJsonSchema({"anyOf": [
    {"type": "number", "minimum": 0, "maximum": MAX_SPEED}, {"type": "null"}]})]
SensorIds = Annotated[list[str], Field(min_length=1, max_length=MAX_SENSORS, json_schema_extra={"uniqueItems": True})]
ONE_TIME_REFERENCE: dict[str, Any] = {"oneOf": [{"required": ["timestamps"]}, {"required": ["last_timestamp"]}]}


def _rows(max_steps: int | None = None) -> Any:
    """`values`: one row of readings per sensor (at least one reading each; at most `max_steps`)."""
    row = {"minItems": 1} if max_steps is None else {"minItems": 1, "maxItems": max_steps}
    return Annotated[list[Annotated[list[Reading], Field(json_schema_extra=row)]],
                     Field(min_length=1, max_length=MAX_SENSORS)]


ForecastRows = _rows()
ObservationRows = _rows(MAX_OBSERVATION_STEPS)

_EXAMPLE_STAMPS = [f"2012-06-04T07:{m:02d}:00" for m in range(0, 60, 5)]
_EXAMPLE_REQUEST = {
    "windows": [
        {
            "id": "monday-morning",
            "sensor_ids": ["773869", "767541"],
            "timestamps": _EXAMPLE_STAMPS,
            "values": [
                [64.4, 63.9, 62.1, 60.0, None, 57.3, 55.8, 54.0, 0, 50.2, 48.9, 47.5],
                [66.1, 66.0, 65.8, 65.5, 65.0, 64.2, 63.6, 62.9, 62.0, 61.2, 60.3, 59.7],
            ],
        },
        {
            "sensor_ids": ["767541", "773869"],
            "last_timestamp": "2012-06-04T17:55:00",
            "values": [
                [55.0, 54.2, 53.1, 52.0, 51.1, 50.5, 49.8, 49.0, 48.5, 48.1, 47.6, 47.0],
                [40.2, 39.5, 38.8, 38.0, 37.5, 37.1, 36.6, 36.0, 35.8, 35.5, 35.0, 34.6],
            ],
        },
    ]
}


class ForecastWindow(BaseModel):
    """The last `input_steps` readings (oldest first) of every sensor of the served model."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_TIME_REFERENCE)

    id: str | None = Field(None, max_length=200, description="client id, echoed in the result")
    sensor_ids: SensorIds = Field(
        ..., description="sensor ids, in any order, each once; must be exactly the served model's sensor set",
    )
    values: ForecastRows = Field(
        ..., description="per sensor (same order as sensor_ids), the model's `input_steps` readings in mph "
        f"(0..{MAX_SPEED:g}), oldest first; null or 0 = missing",
    )
    timestamps: list[datetime] | None = Field(
        None, json_schema_extra={"minItems": 1},
        description="timestamp of each reading (strictly increasing, one step apart); sensors' local wall-clock "
        "time: a UTC offset, if given, is kept in the response, not converted; the readings and "
        f"the forecast must lie within {MIN_TIMESTAMP.isoformat()} .. {MAX_TIMESTAMP.isoformat()}",
    )
    last_timestamp: datetime | None = Field(
        None, description="alternative to `timestamps`: the time of the newest reading (same supported range)"
    )

    @model_validator(mode="after")
    def _one_time_reference(self) -> ForecastWindow:
        if (self.timestamps is None) == (self.last_timestamp is None):
            raise ValueError("give exactly one of `timestamps` (one per reading) or `last_timestamp`")
        return self


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_REQUEST]})

    windows: list[ForecastWindow] = Field(..., min_length=1, max_length=MAX_WINDOWS)


class Forecast(BaseModel):
    id: str | None = None
    timestamps: list[datetime] = Field(description="the forecast steps' timestamps")
    sensor_ids: list[str] = Field(description="same order as the request")
    values: list[list[float]] = Field(description="per sensor, the forecast speeds in mph, one per timestamp")


class ForecastResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "traffic", "version": 1, "unit": "mph", "step_seconds": 300, "horizon": 12,
        "forecasts": [{
            "id": "monday-morning",
            "timestamps": [f"2012-06-04T08:{m:02d}:00" for m in range(0, 60, 5)],
            "sensor_ids": ["773869", "767541"],
            "values": [[46.1] * 12, [58.9] * 12],
        }],
    }]})

    model: str
    version: int
    unit: str = "mph"
    step_seconds: int
    horizon: int
    forecasts: list[Forecast]


class SensorsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "traffic", "version": 1, "sensor_ids": ["773869", "767541"], "step_seconds": 300,
        "input_steps": 12, "horizon": 12}]})

    model: str
    version: int
    sensor_ids: list[str]
    step_seconds: int
    input_steps: int
    horizon: int


_OBSERVATION_EXAMPLE = {"windows": [{"sensor_ids": ["773869", "767541"], "last_timestamp": "2012-06-04T08:05:00",
                                     "values": [[45.2, 44.8], [58.1, None]]}]}


# Actual readings as they arrive: `/traffic/forecast`'s window format, except that a window may hold any subset
# of the sensors and any number of steps (1..MAX_OBSERVATION_STEPS). No docstring: it would change the OpenAPI.
class ObservationWindow(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_TIME_REFERENCE)

    sensor_ids: SensorIds = Field(..., description="any subset of the served model's sensors, in any order, each once")
    values: ObservationRows = Field(
        ..., description="per sensor (same order as sensor_ids), the actual readings in mph "
        f"(0..{MAX_SPEED:g}), oldest first, 1..{MAX_OBSERVATION_STEPS} per sensor; null or 0 = missing")
    timestamps: list[datetime] | None = Field(
        None, max_length=MAX_OBSERVATION_STEPS, json_schema_extra={"minItems": 1},
        description="time of each reading (strictly increasing, one model step apart; sensors' local wall-clock "
        f"time, as for forecasts), within {MIN_TIMESTAMP.isoformat()} .. {MAX_TIMESTAMP.isoformat()}")
    last_timestamp: datetime | None = Field(None, description="alternative to `timestamps`: the newest reading's time")

    @model_validator(mode="after")
    def _one_time_reference(self) -> ObservationWindow:
        if (self.timestamps is None) == (self.last_timestamp is None):
            raise ValueError("give exactly one of `timestamps` (one per reading) or `last_timestamp`")
        return self


class ObservationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_OBSERVATION_EXAMPLE]})

    windows: list[ObservationWindow] = Field(..., min_length=1, max_length=MAX_WINDOWS)


class ObservationResponse(BaseModel):
    model: str
    version: int
    matched: int = Field(description="readings scored against at least one kept forecast")
    duplicate: int = Field(description="readings whose forecasts were already scored")
    late: int = Field(description="readings whose forecasts were evicted (age or size bound) before they came")
    unmatched: int = Field(description="readings no kept forecast targets")
    missing: int = Field(description="0 / null readings")
