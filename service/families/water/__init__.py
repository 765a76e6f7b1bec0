"""Water family: gap filling of multimodal hydrology fields (POST /water/reconstruct)."""

from __future__ import annotations

from service.families.water.metrics import ROLLOUT_QUALITY, WaterMetrics
from service.families.water.settings import WaterSettings
from service.plugin import FamilySpec

SPEC = FamilySpec("water", route_prefix="/water", summary="hydrology reconstruction", settings=WaterSettings,
                  metrics=WaterMetrics, rollout_quality=ROLLOUT_QUALITY)
