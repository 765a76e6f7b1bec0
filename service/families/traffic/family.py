"""The traffic plug-in: its routes, and per loaded version the parsed manifest and the forecast store."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from families.traffic.contract import Preprocessing
from service.families.traffic import SPEC
from service.families.traffic.quality import forecast_store
from service.families.traffic.routes import TrafficState, router
from service.plugin import FamilyPlugin

if TYPE_CHECKING:
    from service.models.version import LoadedVersion

EXAMPLE_LAST_READING = datetime(2012, 6, 4, 7, 55)  # a Monday morning, well inside the supported range


def forecast_example(pre: Preprocessing) -> dict[str, Any]:
    """One window over every sensor of the served model on its step grid (mph, one missing reading)."""
    step = timedelta(seconds=pre.step_seconds)
    steps = pre.input_steps
    stamps = [(EXAMPLE_LAST_READING - step * (steps - 1 - k)).isoformat() for k in range(steps)]
    values: list[list[float | None]] = [[round(64.0 - 0.5 * k - s % 9, 1) for k in range(steps)]
                                        for s in range(len(pre.sensor_ids))]
    values[0][steps // 2] = None
    return {"windows": [{"id": "example", "sensor_ids": pre.sensor_ids, "timestamps": stamps, "values": values}]}


class TrafficPlugin(FamilyPlugin[TrafficState]):
    spec = SPEC
    router = router

    def prepare(self, version: LoadedVersion) -> TrafficState:
        pre = version.manifest.preprocessing_as(Preprocessing)
        # Fail the load early if the graph does not take the manifest's windows.
        shape = version.manifest.primary.inputs[0].shape
        if shape[1:3] != [pre.input_steps, len(pre.sensor_ids)]:
            raise ValueError(f"graph input shape {shape} does not match {pre.input_steps} steps x "
                             f"{len(pre.sensor_ids)} sensors of the manifest")
        return TrafficState(preprocessing=pre, store=forecast_store(
            version, pre, self.settings_of(version), self.metrics_of(version), version.metrics.drift))

    def openapi_examples(self, version: LoadedVersion, state: TrafficState) -> dict[str, Any]:
        return {"/traffic/forecast": forecast_example(state.preprocessing)}


PLUGIN = TrafficPlugin()
