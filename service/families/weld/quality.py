"""Weld out-of-distribution signal (issue 16): how far each classified sample lies from the gallery.

- Threshold: families/weld/ood.py (the gallery's leave-one-out nearest distance, 99th percentile), from the
  manifest or computed from the shipped gallery when the version loads (`prepare`, a worker thread).
  Enrolment does not move it: enrolled samples are judged against the training gallery's spread.
- Per classified sample: the nearest distance and the vote margin (top share minus runner-up) as
  histograms by predicted class (12 classes: bounded labels), a predicted-class counter, and OOD when the
  nearest distance exceeds the threshold: a counter and `quality_ood_ratio`, the share over the last
  `quality_ood_window` samples (setting `SERVICE_WELD_QUALITY_OOD_WINDOW`). A request with another `metric`
  than the threshold's is not judged OOD.
- Updates per batch: the series of each class are looked up once per version, counters move once per class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.quality.drift import RecentRatio

if TYPE_CHECKING:
    from families.weld.gallery import GallerySnapshot
    from families.weld.knn import KnnResult
    from service.families.weld.metrics import WeldMetrics


@dataclass
class WeldQuality:
    """The live side for one model version; `record` runs on a worker thread (prometheus is thread-safe)."""

    metrics: WeldMetrics
    model: str
    version: str
    classes: tuple[str, ...]
    metric: str
    threshold: float | None
    recent: RecentRatio
    by_class: list[tuple[Any, Any, Any]]  # per class index: (nearest distance, vote margin, predictions) series
    ood: Any

    @classmethod
    def create(cls, metrics: WeldMetrics, model: str, version: str, classes: tuple[str, ...], metric: str,
               threshold: float | None, window: int) -> WeldQuality:
        if threshold is not None:
            metrics.ood_threshold.labels(model, version, metric).set(threshold)
        recent = RecentRatio(metrics.ood_ratio.labels(model, version), window)
        by_class = [(metrics.nearest_distance.labels(model, version, name), metrics.vote_margin.labels(
            model, version, name), metrics.predictions.labels(model, version, name)) for name in classes]
        return cls(metrics, model, version, classes, metric, threshold, recent, by_class,
                   metrics.ood_samples.labels(model, version))

    def record(self, result: KnnResult, metric: str) -> None:
        nearest = result.distances[:, 0].astype(np.float64)
        votes = np.sort(result.votes, axis=1)
        margins = votes[:, -1] - (votes[:, -2] if votes.shape[1] > 1 else 0.0)
        predicted = result.predictions.astype(np.int64)
        for index in np.unique(predicted).tolist():
            rows = predicted == index
            distance, margin, predictions = self.by_class[index]
            for value in nearest[rows].tolist():
                distance.observe(value)
            for value in margins[rows].tolist():
                margin.observe(value)
            predictions.inc(int(np.count_nonzero(rows)))
        if self.threshold is None or metric != self.metric:
            return
        flags = (nearest > self.threshold).tolist()
        if any(flags):
            self.ood.inc(sum(flags))
        self.recent.add(flags)


def search_and_record(gallery: GallerySnapshot, queries: np.ndarray, k: int, metric: str, num_classes: int,
                      quality: WeldQuality) -> KnnResult:
    """The k-NN search, then its quality signals, in one work-pool job."""
    result = gallery.search(queries, k, metric, num_classes)
    quality.record(result, metric)
    return result
