"""Exact k-NN search and voting against a brute-force reference and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from families.weld.knn import knn_search


def _brute_force(q: np.ndarray, r: np.ndarray, labels: np.ndarray, k: int, metric: str, classes: int):
    out_idx, out_dist, out_pred = [], [], []
    for row in q.astype(np.float64):
        if metric == "cosine":
            d = np.array([1 - row @ ref / (np.linalg.norm(row) * np.linalg.norm(ref)) for ref in r])
        elif metric == "euclidean":
            d = np.array([np.sqrt(((row - ref) ** 2).sum()) for ref in r])
        else:
            d = np.array([np.abs(row - ref).sum() for ref in r])
        order = np.argsort(d, kind="stable")[:k]
        votes = np.bincount(labels[order], minlength=classes)
        out_idx.append(order)
        out_dist.append(d[order])
        out_pred.append(int(np.argmax(votes)))  # first maximum = lowest class index, as scikit-learn
    return np.array(out_idx), np.array(out_dist), np.array(out_pred)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan"])
@pytest.mark.parametrize("k", [1, 5, 8])
def test_knn_equals_brute_force_and_sklearn(metric: str, k: int) -> None:
    rng = np.random.default_rng(k)
    refs = rng.normal(size=(300, 24)).astype(np.float32)
    labels = rng.integers(0, 12, 300)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    got = knn_search(torch.from_numpy(queries), torch.from_numpy(refs), labels, k, metric, num_classes=12,
                     chunk=16)  # several chunks
    idx, dist, pred = _brute_force(queries, refs, labels, k, metric, 12)
    np.testing.assert_array_equal(got.indices, idx)
    np.testing.assert_allclose(got.distances, dist, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got.predictions, pred)
    np.testing.assert_allclose(got.votes.sum(1), 1.0)
    expected_votes = np.stack([np.bincount(labels[row], minlength=12) / k for row in idx])
    np.testing.assert_allclose(got.votes, expected_votes)
    sk = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(refs, labels)
    np.testing.assert_array_equal(got.predictions, sk.predict(queries))


def test_vote_ties_go_to_the_lowest_class_and_k_is_capped() -> None:
    refs = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]], np.float32)
    labels = np.array([7, 2, 7, 2])
    result = knn_search(np.array([[1.0, 1.0]], np.float32), refs, labels, k=4, metric="cosine", num_classes=12)
    assert result.predictions.tolist() == [2]
    assert result.votes[0, 2] == result.votes[0, 7] == 0.5
    assert knn_search(refs[:1], refs, labels, k=10).indices.shape == (1, 4)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan"])
def test_served_gallery_search_equals_brute_force(tmp_path, metric: str) -> None:
    """The service's path (GallerySnapshot.search: precomputed transposed unit refs / squared norms)."""
    from families.weld.gallery import GalleryKey, GalleryStore, npz_bytes
    from families.weld.gallery_db import open_gallery_db

    rng = np.random.default_rng(1)
    refs = rng.normal(size=(500, 32)).astype(np.float32)
    labels = rng.integers(0, 12, 500)
    (tmp_path / "g.npz").write_bytes(npz_bytes(refs[:400], labels[:400], np.array([f"r{i}" for i in range(400)])))
    store = GalleryStore(tmp_path / "g.npz", open_gallery_db("", tmp_path / "state"), GalleryKey("weld", "1"),
                         num_classes=12)
    store.enroll(refs[400:], labels[400:].tolist(), [f"r{i}" for i in range(400, 500)])
    queries = rng.normal(size=(25, 32)).astype(np.float32)
    got = store.snapshot.search(queries, 7, metric, 12)
    idx, dist, pred = _brute_force(queries, refs, labels, 7, metric, 12)
    np.testing.assert_array_equal(got.indices, idx)
    np.testing.assert_allclose(got.distances, dist, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got.predictions, pred)
