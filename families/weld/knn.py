"""Exact k-nearest-neighbour search and voting, shared by training's evaluation and the service.

Search is one matrix product + top-k on the serving device (GPU when there is one): exact, and fast enough
up to ~1M references (faiss_index.py: the optional FAISS index, same neighbours, voted by `vote`). Voting
follows scikit-learn's `KNeighborsClassifier(weights="uniform")`: the class with most votes wins, ties go to
the lowest class index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("cosine", "euclidean", "manhattan")


def pairwise_distance(queries: torch.Tensor, refs: torch.Tensor, metric: str, refs_normalized: bool = False,
                      ref_sq_norms: torch.Tensor | None = None, refs_transposed: bool = False) -> torch.Tensor:
    """(Q, D) x (R, D) -> (Q, R) distances. A served gallery passes what it precomputed once (unit-norm
    refs for cosine, squared norms for euclidean) so a query costs one matmul and nothing of size R x D."""
    if metric == "cosine":
        q = torch.nn.functional.normalize(queries, dim=1)
        if refs_normalized and refs_transposed:
            return 1.0 - q @ refs  # refs given as a contiguous (D, R): the product streams it row by row
        r = refs if refs_normalized else torch.nn.functional.normalize(refs, dim=1)
        return 1.0 - q @ r.T
    if metric == "euclidean":
        # |q|^2 + |r|^2 - 2 q.r: still one matmul; clamp tiny negatives from rounding.
        r_sq = ref_sq_norms if ref_sq_norms is not None else (refs * refs).sum(1)
        sq = (queries * queries).sum(1, keepdim=True) + r_sq[None, :] - 2.0 * (queries @ refs.T)
        return sq.clamp_min(0.0).sqrt()
    if metric == "manhattan":
        return torch.cdist(queries, refs, p=1.0)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


@dataclass
class KnnResult:
    indices: np.ndarray  # (Q, k) gallery rows, nearest first
    distances: np.ndarray  # (Q, k)
    predictions: np.ndarray  # (Q,) class index
    votes: np.ndarray  # (Q, C) vote share per class (sums to 1)


def knn_search(
    queries: torch.Tensor | np.ndarray,
    refs: torch.Tensor | np.ndarray,
    ref_labels: torch.Tensor | np.ndarray,
    k: int,
    metric: str = "cosine",
    num_classes: int | None = None,
    chunk: int = 4096,
    refs_normalized: bool = False,
    ref_sq_norms: torch.Tensor | None = None,
    refs_transposed: bool = False,
) -> KnnResult:
    """Exact k-NN of `queries` among `refs` (on the refs' device), with uniform majority voting.

    `refs_transposed` (cosine with `refs_normalized` only): `refs` is the (D, R) transpose, contiguous.
    """
    if refs_transposed and not (metric == "cosine" and refs_normalized):
        raise ValueError("refs_transposed is only supported for cosine search on normalised references")
    refs_t = torch.as_tensor(refs)
    refs_count = refs_t.shape[1] if refs_transposed else refs_t.shape[0]
    device = refs_t.device
    queries_t = torch.as_tensor(queries, device=device, dtype=refs_t.dtype)
    labels_t = torch.as_tensor(ref_labels, device=device, dtype=torch.long)
    if refs_count == 0:
        raise ValueError("the gallery is empty")
    k = min(int(k), refs_count)
    if k < 1:
        raise ValueError("k must be >= 1")
    classes = int(num_classes if num_classes is not None else int(labels_t.max()) + 1)
    all_dist, all_idx = [], []
    with torch.no_grad():
        for start in range(0, queries_t.shape[0], chunk):
            dist = pairwise_distance(queries_t[start:start + chunk], refs_t, metric, refs_normalized, ref_sq_norms,
                                     refs_transposed)
            top_d, top_i = torch.topk(dist, k, dim=1, largest=False, sorted=True)
            all_dist.append(top_d)
            all_idx.append(top_i)
        distances = torch.cat(all_dist) if all_dist else torch.zeros((0, k), device=device)
        indices = torch.cat(all_idx) if all_idx else torch.zeros((0, k), dtype=torch.long, device=device)
        return vote(indices, distances, labels_t, classes)


def vote(indices: torch.Tensor, distances: torch.Tensor, ref_labels: torch.Tensor, num_classes: int) -> KnnResult:
    """Uniform majority vote of the neighbours `indices` (Q, k), nearest first, whatever found them."""
    k = indices.shape[1]
    with torch.no_grad():
        neighbour_labels = ref_labels[indices]
        counts = torch.zeros((indices.shape[0], num_classes), device=indices.device, dtype=torch.float32)
        counts.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels, dtype=torch.float32))
        predictions = counts.argmax(dim=1)  # first maximum = lowest class index on ties
    return KnnResult(
        indices=indices.cpu().numpy(),
        distances=distances.float().cpu().numpy(),
        predictions=predictions.cpu().numpy(),
        votes=(counts / max(k, 1)).cpu().numpy(),
    )
