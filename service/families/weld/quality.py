"""Weld out-of-distribution signal (issue 16): how far each classified sample lies from the gallery.

- Threshold: families/weld/ood.py (the gallery's leave-one-out nearest distance, 99th percentile), from the
  manifest or computed from the shipped gallery when the version loads (`prepare`, a worker thread).
  Enrolment does not move it: enrolled samples are judged against the training gallery's spread.
- Per classified sample: the nearest distance and the vote margin (top share minus runner-up) as
  histograms by predicted class (12 classes: bounded labels), a predicted-class counter, and OOD when the
  nearest distance exceeds the threshold: a counter and `quality_ood_ratio`, the share over the last
  `quality_ood_window` samples (setting `SERVICE_WELD_QUALITY_OOD_WINDOW`). A request with another `metric`
  than the threshold's is not judged OOD.
- Updates per batch: a class's series are looked up once per version (when first predicted: no empty series),
  counters move once per class.
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
    by_class: dict[int, tuple[Any, Any, Any]]  # class index -> (nearest distance, vote margin, predictions)
    ood: Any  # the OOD counter's series, from the first OOD sample on

    @classmethod
    def create(cls, metrics: WeldMetrics, model: str, version: str, classes: tuple[str, ...], metric: str,
               threshold: float | None, window: int) -> WeldQuality:
        if threshold is not None:
            metrics.ood_threshold.labels(model, version, metric).set(threshold)
        recent = RecentRatio(metrics.ood_ratio.labels(model, version), window)
        return cls(metrics, model, version, classes, metric, threshold, recent, {}, None)

    def _series(self, index: int) -> tuple[Any, Any, Any]:
        found = self.by_class.get(index)
        if found is None:  # a dict insert under the GIL: two threads at worst look the same series up twice
            m, name = self.metrics, self.classes[index]
            found = self.by_class[index] = (m.nearest_distance.labels(self.model, self.version, name),
                                            m.vote_margin.labels(self.model, self.version, name),
                                            m.predictions.labels(self.model, self.version, name))
        return found

    def record(self, result: KnnResult, metric: str) -> None:
        nearest = result.distances[:, 0].astype(np.float64)
        votes = np.sort(result.votes, axis=1)
        margins = votes[:, -1] - (votes[:, -2] if votes.shape[1] > 1 else 0.0)
        predicted = result.predictions.astype(np.int64)
        for index in np.unique(predicted).tolist():
            rows = predicted == index
            distance, margin, predictions = self._series(index)
            for value in nearest[rows].tolist():
                distance.observe(value)
            for value in margins[rows].tolist():
                margin.observe(value)
            predictions.inc(int(np.count_nonzero(rows)))
        if self.threshold is None or metric != self.metric:
            return
        flags = (nearest > self.threshold).tolist()
        if any(flags):
            if self.ood is None:
                self.ood = self.metrics.ood_samples.labels(self.model, self.version)
            self.ood.inc(sum(flags))
        self.recent.add(flags)


def search_and_record(gallery: GallerySnapshot, queries: np.ndarray, k: int, metric: str, num_classes: int,
                      quality: WeldQuality) -> KnnResult:
    """The k-NN search, then its quality signals, in one work-pool job."""
    result = gallery.search(queries, k, metric, num_classes)
    quality.record(result, metric)
    return result
