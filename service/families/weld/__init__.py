"""Weld defect family: four-modality embedding + k-NN classification (POST /weld/classify, /weld/gallery)."""

from __future__ import annotations

from service.families.weld.metrics import ROLLOUT_QUALITY, WeldMetrics
from service.families.weld.settings import WeldSettings
from service.plugin import FamilySpec

SPEC = FamilySpec(
    "weld", route_prefix="/weld", summary="weld defect classification",
    non_idempotent_routes=("/weld/gallery",),  # enrolment and removal: never re-sent to another replica
    settings=WeldSettings, metrics=WeldMetrics, rollout_quality=ROLLOUT_QUALITY)
