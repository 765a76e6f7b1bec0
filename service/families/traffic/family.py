"""The traffic `Family`: its router and the per-version preparation (manifest parsed once)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from service.families.traffic.routes import STATE_KEY, TrafficSpec, build_router, spec_of
from service.plugin import FamilyPlugin as Family  # transitional

if TYPE_CHECKING:
    from service.repository import LoadedVersion

EXAMPLE_LAST_READING = datetime(2012, 6, 4, 7, 55)  # a Monday morning, well inside the supported range


def forecast_example(spec: TrafficSpec) -> dict[str, Any]:
    """One window over every sensor of the served model on its step grid (mph, one missing reading)."""
    step = timedelta(seconds=spec.step_seconds)
    steps = spec.input_steps
    stamps = [(EXAMPLE_LAST_READING - step * (steps - 1 - k)).isoformat() for k in range(steps)]
    values: list[list[float | None]] = [[round(64.0 - 0.5 * k - s % 9, 1) for k in range(steps)]
                                        for s in range(len(spec.sensor_ids))]
    values[0][steps // 2] = None
    return {"windows": [{"id": "example", "sensor_ids": spec.sensor_ids, "timestamps": stamps, "values": values}]}


class TrafficFamily(Family):
    name = "traffic"

    def router(self) -> APIRouter:
        return build_router()

    def prepare(self, version: LoadedVersion) -> None:
        # Parse the manifest once, and fail the load early if it lacks what the endpoint needs.
        spec = TrafficSpec.from_preprocessing(version.manifest.preprocessing)
        shape = version.manifest.primary.inputs[0].shape
        if shape[1:3] != [spec.input_steps, len(spec.sensor_ids)]:
            raise ValueError(f"graph input shape {shape} does not match {spec.input_steps} steps x "
                             f"{len(spec.sensor_ids)} sensors of the manifest")
        version.state[STATE_KEY] = spec

    def openapi_examples(self, version: LoadedVersion, state: Any = None) -> dict[str, Any]:
        return {"/traffic/forecast": forecast_example(spec_of(version))}
PLUGIN = TrafficFamily()
