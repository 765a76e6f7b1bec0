"""The weld family's series: distance to the nearest gallery reference and vote margin by predicted class,
predictions, out-of-distribution samples, their recent share and the threshold; and how a rollout compares two
versions from them (`ROLLOUT_QUALITY`). Labels stay bounded: model, version, the classes."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.plugin import RolloutQuality, RolloutTotals

VERSION_LABELS = ("model", "version")
CLASS_LABELS = (*VERSION_LABELS, "class")
# Dense where cosine distances (0-2) land, coarse up to the euclidean distances of raw embeddings.
DISTANCE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 20.0, 100.0)
MARGIN_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class WeldMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.nearest_distance = Histogram("quality_nearest_distance", "Distance to the nearest gallery "
                                          "reference, by predicted class.", CLASS_LABELS, buckets=DISTANCE_BUCKETS,
                                          registry=r)
        self.vote_margin = Histogram("quality_vote_margin", "Top vote share minus the runner-up's, by "
                                     "predicted class.", CLASS_LABELS, buckets=MARGIN_BUCKETS, registry=r)
        self.predictions = Counter("quality_predictions", "Classified samples by predicted class.", CLASS_LABELS,
                                   registry=r)
        self.ood_samples = Counter("quality_ood_samples", "Classified samples farther from the gallery than its "
                                   "leave-one-out p99 nearest distance.", VERSION_LABELS, registry=r)
        self.ood_ratio = Gauge("quality_ood_ratio", "Share of the last classified samples (a bounded window) "
                               "that are out of distribution.", VERSION_LABELS, registry=r)
        self.ood_threshold = Gauge("quality_ood_threshold", "The gallery's leave-one-out p99 nearest distance.",
                                   (*VERSION_LABELS, "metric"), registry=r)


def rollout_figures(totals: RolloutTotals) -> dict[str, Any]:
    """The out-of-distribution share of the classified samples."""
    samples = totals.get(("quality_predictions_total", ""), 0.0)
    share = totals.get(("quality_ood_samples_total", ""), 0.0) / samples if samples > 0 else None
    return {"ood_share": share, "classified": int(samples), "figure": "ood_share", "scored": int(samples)}


ROLLOUT_QUALITY = RolloutQuality(samples={"quality_predictions_total": None, "quality_ood_samples_total": None},
                                 figures=rollout_figures)
