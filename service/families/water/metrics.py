"""The water family's series: the sampled self-check's error per modality (its input drift is the platform's
`DriftMetrics`); and how a rollout compares two versions from them (`ROLLOUT_QUALITY`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter

from service.plugin import RolloutQuality, RolloutTotals

MODALITY_LABELS = ("model", "version", "modality")


class WaterMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.selfcheck_abs_error = Counter("quality_selfcheck_abs_error", "Sum of |reconstruction - hidden "
                                           "value| (normalised units) on sampled requests.", MODALITY_LABELS,
                                           registry=r)
        self.selfcheck_points = Counter("quality_selfcheck_points", "Hidden values reconstructed by the "
                                        "self-check.", MODALITY_LABELS, registry=r)


def rollout_figures(totals: RolloutTotals) -> dict[str, Any]:
    """The self-check's mean absolute error (normalised units)."""
    points = totals.get(("quality_selfcheck_points_total", ""), 0.0)
    mae = totals.get(("quality_selfcheck_abs_error_total", ""), 0.0) / points if points > 0 else None
    return {"selfcheck_mae": mae, "selfcheck_points": int(points), "figure": "selfcheck_mae", "scored": int(points)}


ROLLOUT_QUALITY = RolloutQuality(
    samples={"quality_selfcheck_abs_error_total": None, "quality_selfcheck_points_total": None},
    figures=rollout_figures)
