"""An optional FAISS index over a weld gallery (`faiss-cpu`, the `faiss` extra), for large galleries.

The index is FAISS's exact `IndexFlat` (inner product on unit vectors for cosine, L2 for euclidean, L1 for
manhattan), so it finds the same neighbours as the torch search in knn.py; distances are returned in that
module's convention (cosine 1 - cos, euclidean sqrt of the squared distance, manhattan L1). Without faiss
installed `available()` is False and the gallery stays on the exact torch search.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from families.weld.knn import METRICS


def available() -> bool:
    """Whether the faiss package can be imported (without importing it)."""
    return importlib.util.find_spec("faiss") is not None


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)  # torch.nn.functional.normalize's eps


class FaissIndex:
    """Exact FAISS search of `embeddings` (N, D) for one `metric`."""

    def __init__(self, embeddings: np.ndarray, metric: str) -> None:
        import faiss

        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        refs = np.ascontiguousarray(embeddings, np.float32)
        if refs.ndim != 2 or len(refs) == 0:
            raise ValueError(f"a FAISS index needs (N, D) references with N > 0, got {refs.shape}")
        self.metric = metric
        self.size, self.dim = refs.shape
        if metric == "cosine":
            self._index = faiss.IndexFlatIP(self.dim)
            refs = np.ascontiguousarray(_unit(refs), np.float32)
        elif metric == "euclidean":
            self._index = faiss.IndexFlatL2(self.dim)
        else:
            self._index = faiss.IndexFlat(self.dim, faiss.METRIC_L1)
        self._index.add(refs)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k) float32 nearest first, indices (Q, k) int64) of the k nearest references."""
        q = np.ascontiguousarray(queries, np.float32)
        if self.metric == "cosine":
            q = np.ascontiguousarray(_unit(q), np.float32)
        scores, indices = self._index.search(q, min(int(k), self.size))
        if self.metric == "cosine":
            distances = 1.0 - scores
        elif self.metric == "euclidean":
            distances = np.sqrt(np.maximum(scores, 0.0))
        else:
            distances = scores
        return distances.astype(np.float32), indices.astype(np.int64)
