"""Traffic forecasting family: `POST /traffic/forecast` on a model exported from training/traffic."""

from __future__ import annotations

from service.families.traffic.metrics import ROLLOUT_QUALITY, TrafficMetrics
from service.families.traffic.settings import TrafficSettings
from service.plugin import FamilySpec

SPEC = FamilySpec(
    "traffic", route_prefix="/traffic", summary="traffic forecasting",
    # Observations score each version's own kept forecasts: a rollout's candidate gets a copy.
    fanout_routes=frozenset({"/traffic/observations"}),
    settings=TrafficSettings, metrics=TrafficMetrics, rollout_quality=ROLLOUT_QUALITY)
