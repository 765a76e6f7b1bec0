"""Weld out-of-distribution signal (issue 16): how far each classified sample lies from the gallery.

- Threshold: the gallery's own leave-one-out nearest-neighbour distance, 99th percentile, for the served
  metric. Export writes it to the manifest (`preprocessing.quality`); a version exported before that gets
  it computed from the shipped gallery when it loads (`prepare`, a worker thread). Enrolment does not move
  it: enrolled samples are judged against the training gallery's spread.
- Per classified sample: the nearest distance and the vote margin (top share minus runner-up) as
  histograms by predicted class (12 classes: bounded labels), a predicted-class counter, and OOD when the
  nearest distance exceeds the threshold: a counter and `quality_ood_ratio`, the share over the last
  `quality_ood_window` samples. A request with another `metric` than the threshold's is not judged OOD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from families.weld.knn import pairwise_distance
from service.quality.drift import RecentRatio

if TYPE_CHECKING:
    from families.weld.knn import KnnResult
    from service.families.weld.gallery import GallerySnapshot
    from service.metrics import QualityMetrics

QUANTILE = 0.99
MAX_LOO_QUERIES = 4096  # rows of a larger gallery used as leave-one-out queries (all rows stay references)
CHUNK = 1024
STATE_KEY = "weld_quality"


def loo_nearest_distances(embeddings: np.ndarray, metric: str, seed: int = 0) -> np.ndarray:
    """Each (sampled) gallery row's distance to its nearest OTHER row; O(min(N, 4096) x N x D), chunked."""
    refs = torch.from_numpy(np.ascontiguousarray(embeddings, np.float32))
    n = refs.shape[0]
    if n < 2:
        return np.zeros(0, np.float32)
    rows = np.arange(n) if n <= MAX_LOO_QUERIES else np.sort(
        np.random.default_rng(seed).choice(n, MAX_LOO_QUERIES, replace=False))
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), CHUNK):
            chunk = torch.from_numpy(rows[start:start + CHUNK])
            dist = pairwise_distance(refs[chunk], refs, metric)
            dist[torch.arange(len(chunk)), chunk] = float("inf")  # leave the row itself out
            out.append(dist.min(dim=1).values.numpy())
    return np.concatenate(out)


def ood_threshold(embeddings: np.ndarray, metric: str) -> float | None:
    distances = loo_nearest_distances(embeddings, metric)
    return float(np.quantile(distances, QUANTILE)) if distances.size else None


def manifest_quality(embeddings: np.ndarray, metric: str) -> dict[str, Any]:
    """What export writes to `preprocessing.quality` (the service recomputes it when absent)."""
    threshold = ood_threshold(embeddings, metric)
    return {} if threshold is None else {"ood_threshold": threshold, "ood_metric": metric, "ood_quantile": QUANTILE}


def threshold_from(preprocessing: dict[str, Any], metric: str, embeddings: np.ndarray) -> float | None:
    """The manifest's threshold for `metric`, else computed from the shipped gallery."""
    quality = preprocessing.get("quality") or {}
    if quality.get("ood_metric") == metric and isinstance(quality.get("ood_threshold"), (int, float)):
        return float(quality["ood_threshold"])
    return ood_threshold(embeddings, metric)


@dataclass
class WeldQuality:
    """The live side for one model version; `record` runs on a worker thread (prometheus is thread-safe)."""

    metrics: QualityMetrics
    model: str
    version: str
    classes: tuple[str, ...]
    metric: str
    threshold: float | None
    recent: RecentRatio

    @classmethod
    def create(cls, metrics: QualityMetrics, model: str, version: str, classes: tuple[str, ...], metric: str,
               threshold: float | None, window: int) -> WeldQuality:
        if threshold is not None:
            metrics.ood_threshold.labels(model, version, metric).set(threshold)
        recent = RecentRatio(metrics.ood_ratio.labels(model, version), window)
        return cls(metrics, model, version, classes, metric, threshold, recent)

    def record(self, result: KnnResult, metric: str) -> None:
        nearest = result.distances[:, 0].astype(np.float64)
        votes = np.sort(result.votes, axis=1)
        margins = votes[:, -1] - (votes[:, -2] if votes.shape[1] > 1 else 0.0)
        m, labels = self.metrics, (self.model, self.version)
        for row, predicted in enumerate(result.predictions.tolist()):
            name = self.classes[int(predicted)]
            m.nearest_distance.labels(*labels, name).observe(float(nearest[row]))
            m.vote_margin.labels(*labels, name).observe(float(margins[row]))
            m.predictions.labels(*labels, name).inc()
        if self.threshold is None or metric != self.metric:
            return
        flags = (nearest > self.threshold).tolist()
        if any(flags):
            m.ood_samples.labels(*labels).inc(sum(flags))
        self.recent.add(flags)


def search_and_record(gallery: GallerySnapshot, queries: np.ndarray, k: int, metric: str, num_classes: int,
                      quality: WeldQuality) -> KnnResult:
    """The k-NN search, then its quality signals, in one work-pool job."""
    result = gallery.search(queries, k, metric, num_classes)
    quality.record(result, metric)
    return result
