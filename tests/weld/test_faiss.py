"""Issue 15 item 10 (b): the optional FAISS index of a weld gallery finds the same neighbours as the exact torch
search, and a gallery store uses it from `faiss_min` references on (shipped + enrolled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from families.weld import faiss_index
from families.weld.gallery import GalleryKey, GalleryStore, npz_bytes
from families.weld.gallery_db import open_gallery_db
from families.weld.knn import METRICS, knn_search

pytestmark = pytest.mark.skipif(not faiss_index.available(), reason="faiss-cpu is not installed (extra `faiss`)")
DIM = 512  # the default model's embedding


def _gallery(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit embeddings (12 classes), labels, and queries near the references."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, DIM)).astype(np.float32)
    labels = rng.integers(0, 12, n)
    emb = centres[labels] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = centres[rng.integers(0, 12, 40)] + 0.8 * rng.standard_normal((40, DIM)).astype(np.float32)
    return emb, labels, queries.astype(np.float32)


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_index_finds_the_exact_neighbours(metric: str) -> None:
    emb, labels, queries = _gallery(3000)
    exact = knn_search(queries, emb, labels, 10, metric, 12)
    distances, indices = faiss_index.FaissIndex(emb, metric).search(queries, 10)
    np.testing.assert_array_equal(indices, exact.indices)
    np.testing.assert_allclose(distances, exact.distances, atol=2e-4, rtol=1e-4)


def _store(tmp_path: Path, emb: np.ndarray, labels: np.ndarray, faiss_min: int, name: str) -> GalleryStore:
    shipped = tmp_path / f"{name}.npz"
    shipped.write_bytes(npz_bytes(emb, labels, [f"r{i}" for i in range(len(emb))]))
    db = open_gallery_db(f"sqlite:///{tmp_path / (name + '.sqlite3')}", tmp_path)
    return GalleryStore(shipped, db, GalleryKey("weld", "1"), num_classes=12, faiss_min=faiss_min, metric="cosine")


def test_store_uses_faiss_above_the_threshold_with_the_same_answers(tmp_path: Path) -> None:
    emb, labels, queries = _gallery(500)
    exact = _store(tmp_path, emb, labels, 0, "exact")
    below = _store(tmp_path, emb, labels, 501, "below")
    indexed = _store(tmp_path, emb, labels, 500, "indexed")
    assert not exact.uses_faiss and not below.uses_faiss and indexed.uses_faiss
    for metric in ("cosine", "euclidean"):  # euclidean is not the index's metric: torch answers it
        a = exact.snapshot.search(queries, 5, metric, 12)
        b = indexed.snapshot.search(queries, 5, metric, 12)
        np.testing.assert_array_equal(b.indices, a.indices)
        np.testing.assert_array_equal(b.predictions, a.predictions)
        np.testing.assert_allclose(b.votes, a.votes)
        np.testing.assert_allclose(b.distances, a.distances, atol=2e-4)

    # An enrolled reference joins the index: a query equal to it finds it first, at distance ~0.
    below.enroll(queries[:1] / np.linalg.norm(queries[:1]), [3], ["new"])
    assert below.uses_faiss and below.snapshot.size == 501
    result = below.snapshot.search(queries[:1], 5, "cosine", 12)
    assert below.snapshot.ids[result.indices[0, 0]] == "new" and result.distances[0, 0] < 1e-5
    for store in (exact, below, indexed):
        store.close()


def test_settings_reach_the_served_gallery(asgi_service, weld_repository: Path) -> None:
    service = asgi_service(weld_repository, weld_faiss_min=1)
    reply = service.post("/weld/classify", json={"samples": [{"id": "x", **_zeros(weld_repository)}]})
    assert reply.status_code == 200, reply.text
    state = service.app.state.hub.get("weld").prepared
    assert state.gallery.uses_faiss
    snapshot = state.gallery.snapshot
    query = np.ones((1, DIM), np.float32)
    served = snapshot.search(query, 5, "cosine", 12)  # through the index
    unit = torch.nn.functional.normalize(snapshot.embeddings, dim=1).numpy()
    np.testing.assert_array_equal(served.indices, knn_search(query, unit, snapshot.label_list, 5).indices)


def _zeros(repository: Path) -> dict:
    import json

    from families.weld.preprocessing import PreprocessParams

    manifest = json.loads((repository / "weld" / "1" / "manifest.json").read_text())
    shapes = PreprocessParams.from_dict(manifest["preprocessing"]["params"]).shapes()
    return {m: np.zeros(s, np.float32).tolist() for m, s in shapes.items()}
