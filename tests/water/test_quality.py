"""Water quality (issue 16 items 3 and 5): the sampled self-check hides a few percent of the visible values,
reconstructs them alongside (never returned) and exports the error per modality; the missing share per
modality is exported beside the training share shipped in the manifest (drift). Cost measured in-process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from testkit import LiveServer, hostile_request, metric_value, running_server

from families.manifest import Manifest
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, patch_mask
from service.families.water.family import ReconstructRequest, WaterSpec, model_inputs, prepare_request
from service.families.water.quality import HIDE_FRACTION, MISSING_PREFIX, WaterQuality
from service.metrics import QualityMetrics
from service.runtimes import open_runtime
from training.water.data import generate

REPORT: list[tuple[str, int, float, float, float]] = []


@pytest.fixture(scope="module")
def manifest(water_repository: Path) -> Manifest:
    return Manifest.read(water_repository / "water" / "1")


@pytest.fixture(scope="module")
def body() -> dict:
    """Two generated samples, the first with a block of missing days in precip and half its river flow."""
    data = generate(2, 20, 20, seed=5)
    samples = [{**{m: data.fields[m][i].astype(float).tolist() for m in MODALITIES},
                "static": data.static[i].astype(float).tolist()} for i in range(2)]
    samples[0]["precip"][1] = [[None] * 20 for _ in range(20)]
    samples[0]["riverflow"] = [None if t % 2 else v for t, v in enumerate(samples[0]["riverflow"])]
    return {"samples": samples}


def _quality(manifest: Manifest, fraction: float) -> tuple[WaterQuality, CollectorRegistry]:
    registry = CollectorRegistry()
    return WaterQuality(QualityMetrics(registry), "water", "1", manifest.preprocessing, fraction, seed=0), registry


def test_manifest_ships_missing_fraction_per_modality(manifest: Manifest) -> None:
    stats = manifest.preprocessing["training_statistics"]
    assert sorted(stats) == sorted(f"{MISSING_PREFIX}{m}" for m in MODALITIES)
    assert all(0.0 <= s["mean"] <= 1.0 and s["std"] >= 0.0 for s in stats.values())


def test_plan_hides_a_few_percent_of_visible_tokens_only(manifest: Manifest, body: dict) -> None:
    spec = WaterSpec.from_preprocessing(manifest.preprocessing)
    quality, _ = _quality(manifest, 1.0)
    prepared = prepare_request(ReconstructRequest.model_validate(body), spec)
    check = quality.plan(prepared.parsed, spec)
    assert check is not None
    for m in MODALITIES:
        originally = np.stack([p.missing[m] for p in prepared.parsed])
        scored = check.scored[m]
        assert not (scored & originally).any(), m  # only values that were sent
        assert (np.stack([s.missing[m] for s in check.samples]) == (originally | scored)).all()
        tokens = patch_mask(originally, spec.patch) if m in IMAGE_MODALITIES else originally
        hidden = patch_mask(scored, spec.patch) if m in IMAGE_MODALITIES else scored
        per_sample = [max(1, round(HIDE_FRACTION * int((~t).sum()))) for t in tokens]
        assert hidden.reshape(len(per_sample), -1).sum(axis=1).tolist() == per_sample, m
    assert not any((p.missing["evap"]).any() for p in prepared.parsed)  # the request's own masks untouched


def test_score_exports_error_per_modality(manifest: Manifest, body: dict, water_repository: Path) -> None:
    spec = WaterSpec.from_preprocessing(manifest.preprocessing)
    quality, registry = _quality(manifest, 1.0)
    prepared = prepare_request(ReconstructRequest.model_validate(body), spec)
    check = quality.plan(prepared.parsed, spec)
    runtime = open_runtime(water_repository / "water" / "1", manifest.graphs["model"], "cpu", cpu_threads=1)
    outputs = runtime.run(model_inputs(check.samples, spec)[0])
    mae = quality.score(check, outputs, spec)
    for m in MODALITIES:
        labels = {"model": "water", "version": "1", "modality": m}
        points = registry.get_sample_value("quality_selfcheck_points_total", labels)
        assert points == int(check.scored[m].sum()) > 0
        total = registry.get_sample_value("quality_selfcheck_abs_error_total", labels)
        assert total == pytest.approx(mae[m] * points) and 0 < mae[m] < 10, (m, mae[m])


def test_selfcheck_cost(manifest: Manifest, body: dict, water_repository: Path) -> None:
    """What a sampled request adds: the check's inputs on the work pool and one more inference."""
    spec = WaterSpec.from_preprocessing(manifest.preprocessing)
    request = ReconstructRequest.model_validate(body)
    runtime = open_runtime(water_repository / "water" / "1", manifest.graphs["model"], "cpu", cpu_threads=1)

    def best(fn, repeat: int = 5) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    plain = prepare_request(request, spec)
    prep_plain = best(lambda: prepare_request(request, spec))
    prep_checked = best(lambda: prepare_request(request, spec, _quality(manifest, 1.0)[0]))
    infer = best(lambda: runtime.run(plain.inputs))
    print(f"water self-check cost (2 samples): preprocessing {prep_plain * 1000:.2f} -> {prep_checked * 1000:.2f} "
          f"ms, + one inference {infer * 1000:.2f} ms on the sampled request")
    assert prep_checked - prep_plain < max(5 * prep_plain, 0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, water_repository: Path) -> Iterator[LiveServer]:
    with running_server(water_repository, tmp_path_factory.mktemp("water-quality") / "server.log",
                      env={"SERVICE_QUALITY_WATER_SELFCHECK_FRACTION": "1.0"}) as live:
        yield live


def test_live_selfcheck_and_drift_metrics(server: LiveServer, body: dict, manifest: Manifest) -> None:
    response = hostile_request(server, lambda c: c.post("/water/reconstruct", json=body), max_seconds=20,
                               report=REPORT, name="water reconstruct, self-checked")
    assert response.status_code == 200, response.text
    spec = WaterSpec.from_preprocessing(manifest.preprocessing)
    parsed = prepare_request(ReconstructRequest.model_validate(body), spec)
    returned = response.json()["samples"][0]
    # Never returned: the hidden patches are the request's own, and sent values come back unchanged.
    assert np.array_equal(np.array(returned["hidden"]["precip"]), parsed.tokens["precip"][0])
    assert returned["evap"] == body["samples"][0]["evap"]
    text = httpx.get(f"{server.url}/metrics").text
    for m in MODALITIES:
        labels = {"model": "water", "modality": m}
        assert metric_value(text, "quality_selfcheck_points_total", labels) > 0, m
        assert metric_value(text, "quality_selfcheck_abs_error_total", labels) > 0, m
        stat = {"model": "water", "statistic": f"{MISSING_PREFIX}{m}"}
        values = int(np.prod(spec.shape(m))) * 2
        assert metric_value(text, "quality_input_statistic_count_total", stat) == values
        missing = sum(int(p.missing[m].sum()) for p in parsed.parsed)
        assert metric_value(text, "quality_input_statistic_sum_total", stat) == missing
        assert metric_value(text, "quality_training_statistic_std", stat) > 0
