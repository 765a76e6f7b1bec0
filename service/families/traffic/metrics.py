"""The traffic family's series: forecast errors scored against observations (sums and counts, so that Prometheus
computes MAE / RMSE / MAPE over any window), observation outcomes, kept forecasts; and how a rollout compares
two versions from them (`ROLLOUT_QUALITY`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.plugin import RolloutQuality, RolloutTotals

VERSION_LABELS = ("model", "version")
HORIZON_LABELS = (*VERSION_LABELS, "horizon", "predictor")  # predictor: model | last_value; horizon: steps


class TrafficMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.forecast_abs_error = Counter("quality_forecast_abs_error", "Sum of |forecast - actual| (mph) over "
                                          "scored points.", HORIZON_LABELS, registry=r)
        self.forecast_squared_error = Counter("quality_forecast_squared_error", "Sum of (forecast - actual)^2 "
                                              "(mph^2) over scored points.", HORIZON_LABELS, registry=r)
        self.forecast_abs_pct_error = Counter("quality_forecast_abs_percentage_error", "Sum of |forecast - "
                                              "actual| / actual over scored points (a ratio).", HORIZON_LABELS,
                                              registry=r)
        self.forecast_points = Counter("quality_forecast_points", "Forecast points scored against an actual.",
                                       HORIZON_LABELS, registry=r)
        self.observations = Counter("quality_observations", "Observed readings by outcome: matched, duplicate, "
                                    "late, unmatched, missing.", (*VERSION_LABELS, "outcome"), registry=r)
        self.forecasts_stored = Gauge("quality_forecasts_stored", "Served forecasts kept for scoring.",
                                      VERSION_LABELS, registry=r)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def rollout_figures(totals: RolloutTotals) -> dict[str, Any]:
    """MAE per horizon step (model predictor) from observations, its mean over steps, the points scored."""
    horizons = sorted({int(h) for (name, h) in totals if name == "quality_forecast_points_total"})
    per_h = {h: _ratio(totals.get(("quality_forecast_abs_error_total", str(h)), 0.0),
                       totals.get(("quality_forecast_points_total", str(h)), 0.0)) for h in horizons}
    scored = sum(totals.get(("quality_forecast_points_total", str(h)), 0.0) for h in horizons)
    known = [v for v in per_h.values() if v is not None]
    mae = sum(known) / len(known) if known else None
    return {"mae_per_horizon": {str(h): v for h, v in per_h.items() if v is not None}, "mae": mae,
            "scored_points": int(scored), "figure": "mae", "scored": int(scored)}


ROLLOUT_QUALITY = RolloutQuality(
    samples={"quality_forecast_abs_error_total": "horizon", "quality_forecast_points_total": "horizon"},
    figures=rollout_figures, only={"predictor": "model"})
