"""Weld out-of-distribution signal (issue 16): leave-one-out p99 threshold, distance / margin histograms per
predicted class, class counts, and an input far from the gallery moving the OOD gauge on a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from benchmarks.harness import LiveServer, metric_value, running_server
from families.manifest import Manifest
from families.weld.knn import KnnResult
from families.weld.ood import loo_nearest_distances, manifest_quality
from families.weld.preprocessing import PreprocessParams
from service.families.weld.metrics import WeldMetrics
from service.families.weld.quality import WeldQuality
from tests.fixtures.hostile import hostile_request
from training.weld.data import read_manifest

REPORT: list[tuple[str, int, float, float, float]] = []
CLASSES = ("a", "b", "c")


def test_leave_one_out_excludes_the_row_itself() -> None:
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32)
    np.testing.assert_allclose(loo_nearest_distances(points, "euclidean"), [1.0, 1.0, 3.0])
    quality = manifest_quality(points, "euclidean")
    assert quality is not None and quality.ood_metric == "euclidean" and 2.9 < quality.ood_threshold <= 3.0
    assert manifest_quality(points[:1], "cosine") is None  # one row has no other neighbour


def test_record_histograms_counts_and_ood_ratio() -> None:
    registry = CollectorRegistry()
    quality = WeldQuality.create(WeldMetrics(registry), "weld", "1", CLASSES, "cosine", 0.5, window=4)
    result = KnnResult(indices=np.zeros((2, 2), int), distances=np.array([[0.1, 0.2], [0.9, 1.0]], np.float32),
                       predictions=np.array([0, 2]), votes=np.array([[1.0, 0, 0], [0, 0.5, 0.5]]))
    quality.record(result, "cosine")
    labels = {"model": "weld", "version": "1"}
    assert registry.get_sample_value("quality_ood_ratio", labels) == 0.5
    assert registry.get_sample_value("quality_ood_samples_total", labels) == 1
    assert registry.get_sample_value("quality_predictions_total", {**labels, "class": "c"}) == 1
    assert registry.get_sample_value("quality_vote_margin_sum", {**labels, "class": "a"}) == 1.0
    assert registry.get_sample_value("quality_nearest_distance_bucket", {**labels, "class": "c", "le": "1.0"}) == 1
    quality.record(result, "euclidean")  # another metric than the threshold's: histograms only
    assert registry.get_sample_value("quality_ood_samples_total", labels) == 1
    quality.record(KnnResult(result.indices, result.distances, result.predictions, result.votes), "cosine")
    near = KnnResult(result.indices[:1], result.distances[:1] * 0, result.predictions[:1], result.votes[:1])
    quality.record(near, "cosine")
    quality.record(near, "cosine")  # window of 4: near, far, near, near -> 1 of 4 is OOD
    assert registry.get_sample_value("quality_ood_ratio", labels) == 0.25


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, weld_repository: Path) -> Iterator[LiveServer]:
    with running_server(weld_repository, tmp_path_factory.mktemp("weld-quality") / "server.log") as live:
        yield live


def _tensors(weld_repository: Path, fill: float) -> bytes:
    params = PreprocessParams.from_dict(Manifest.read(weld_repository / "weld" / "1").preprocessing["params"])
    sample = {m: np.full(s, fill).tolist() for m, s in params.shapes().items()}
    return json.dumps({"samples": [{"id": "q", **sample}]}).encode()


def _classify(body: bytes):
    return lambda client: client.post("/weld/classify", content=body, headers={"content-type": "application/json"})


def _gallery_sample(weld_data: Path):
    """Multipart uploads of a training sample: its embedding is in the gallery (distance ~0)."""
    record = [r for r in read_manifest(weld_data) if r.split == "TRAIN"][0]
    parts = [("video", (record.video_path().name, record.video_path().read_bytes(), "video/x-msvideo")),
             ("audio", (record.audio_path().name, record.audio_path().read_bytes(), "audio/flac")),
             ("sensors", (record.sensor_path().name, record.sensor_path().read_bytes(), "text/csv"))]
    parts += [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in record.photo_paths()]
    return lambda client: client.post("/weld/classify", files=parts)


def test_manifest_ships_the_threshold(weld_repository: Path) -> None:
    quality = Manifest.read(weld_repository / "weld" / "1").preprocessing["quality"]
    assert quality["ood_quantile"] == 0.99 and quality["ood_threshold"] > 0


def test_classification_updates_distance_histogram_and_far_input_moves_ood(server: LiveServer, weld_data: Path,
                                                                           weld_repository: Path) -> None:
    near = hostile_request(server, _gallery_sample(weld_data), max_seconds=20, report=REPORT,
                           name="classify a gallery sample (distance histogram)")
    assert near.status_code == 200, near.text
    text = httpx.get(f"{server.url}/metrics").text
    assert metric_value(text, "quality_nearest_distance_count", {"model": "weld"}) == 1
    assert metric_value(text, "quality_predictions_total", {"model": "weld"}) == 1
    threshold = metric_value(text, "quality_ood_threshold", {"model": "weld"})
    assert threshold > 0
    before = metric_value(text, "quality_ood_ratio", {"model": "weld"})
    assert before == 0.0, near.json()
    far = hostile_request(server, _classify(_tensors(weld_repository, 1e4)), max_seconds=20, report=REPORT,
                          name="classify far from the gallery")
    assert far.status_code == 200, far.text
    assert far.json()["results"][0]["neighbours"][0]["distance"] > threshold
    after = httpx.get(f"{server.url}/metrics").text
    assert metric_value(after, "quality_ood_ratio", {"model": "weld"}) > before
    assert metric_value(after, "quality_ood_samples_total", {"model": "weld"}) >= 1
