"""The weld out-of-distribution threshold: how far a sample may lie from the gallery before it is called OOD.

The gallery's own leave-one-out nearest-neighbour distance, 99th percentile, for the served metric. Export
writes it to the manifest (`Preprocessing.quality`); the service computes it from the shipped gallery when a
version exported before that loads. The live side (histograms, OOD ratio) is service/families/weld/quality.py.
"""

from __future__ import annotations

import numpy as np
import torch

from families.weld.contract import OodThreshold
from families.weld.knn import pairwise_distance

QUANTILE = 0.99
MAX_LOO_QUERIES = 4096  # rows of a larger gallery used as leave-one-out queries (all rows stay references)
CHUNK = 1024


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


def manifest_quality(embeddings: np.ndarray, metric: str) -> OodThreshold | None:
    """What export writes to `preprocessing.quality` (None: a gallery too small to have a spread)."""
    threshold = ood_threshold(embeddings, metric)
    return None if threshold is None else OodThreshold(ood_threshold=threshold, ood_metric=metric,
                                                       ood_quantile=QUANTILE)


def threshold_from(quality: OodThreshold | None, metric: str, embeddings: np.ndarray) -> float | None:
    """The manifest's threshold for `metric`, else computed from the shipped gallery."""
    if quality is not None and quality.ood_metric == metric:
        return quality.ood_threshold
    return ood_threshold(embeddings, metric)
