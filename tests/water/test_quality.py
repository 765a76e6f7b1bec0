"""Water quality (issue 16 items 3 and 5): the sampled self-check hides a few percent of the visible values,
reconstructs them alongside (never returned) and exports the error per modality; the missing share per
modality is exported beside the training share shipped in the manifest (drift). Cost measured in-process."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from benchmarks.harness import LiveServer, metric_value
from families.manifest import Manifest
from families.water.contract import Preprocessing, missing_statistic
from families.water.observed import graph_inputs
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, patch_mask
from service.families.water.metrics import WaterMetrics
from service.families.water.quality import HIDE_FRACTION, WaterQuality
from service.families.water.routes import WaterState, prepare_request
from service.families.water.schemas import ReconstructRequest, max_json_values
from service.metrics import DriftMetrics
from service.runtimes import open_runtime
from tests.fixtures.hostile import hostile_request
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


@pytest.fixture(scope="module")
def pre(manifest: Manifest) -> Preprocessing:
    return manifest.preprocessing_as(Preprocessing)


def _state(pre: Preprocessing, fraction: float) -> tuple[WaterState, CollectorRegistry]:
    """The served state with its own metrics registry; `fraction` 0 never self-checks."""
    registry = CollectorRegistry()
    quality = WaterQuality(WaterMetrics(registry), DriftMetrics(registry), "water", "1", pre.training_statistics,
                           fraction, seed=0)
    return WaterState(pre, pre.stats.norm_stats(), max_json_values(pre.grid), quality), registry


def test_manifest_ships_missing_fraction_per_modality(manifest: Manifest) -> None:
    stats = manifest.preprocessing["training_statistics"]
    assert sorted(stats) == sorted(missing_statistic(m) for m in MODALITIES)
    assert all(0.0 <= s["mean"] <= 1.0 and s["std"] >= 0.0 for s in stats.values())


def test_plan_hides_a_few_percent_of_visible_tokens_only(pre: Preprocessing, body: dict) -> None:
    patch = pre.grid.patch
    prepared = prepare_request(ReconstructRequest.model_validate(body), _state(pre, 0.0)[0])
    assert prepared.check is None
    check = _state(pre, 1.0)[0].quality.plan(prepared.samples, patch)
    assert check is not None
    for m in MODALITIES:
        originally = np.stack([p.missing[m] for p in prepared.samples])
        scored = check.scored[m]
        assert not (scored & originally).any(), m  # only values that were sent
        assert (np.stack([s.missing[m] for s in check.samples]) == (originally | scored)).all()
        tokens = patch_mask(originally, patch) if m in IMAGE_MODALITIES else originally
        hidden = patch_mask(scored, patch) if m in IMAGE_MODALITIES else scored
        per_sample = [max(1, round(HIDE_FRACTION * int((~t).sum()))) for t in tokens]
        assert hidden.reshape(len(per_sample), -1).sum(axis=1).tolist() == per_sample, m
    assert not any((p.missing["evap"]).any() for p in prepared.samples)  # the request's own masks untouched


def test_score_exports_error_per_modality(manifest: Manifest, pre: Preprocessing, body: dict,
                                          water_repository: Path) -> None:
    state, registry = _state(pre, 1.0)
    prepared = prepare_request(ReconstructRequest.model_validate(body), state)
    check = state.quality.plan(prepared.samples, pre.grid.patch)
    runtime = open_runtime(water_repository / "water" / "1", manifest.graphs["model"], "cpu", cpu_threads=1)
    outputs = runtime.run(graph_inputs(check.samples, pre, state.stats)[0])
    mae = state.quality.score(check, outputs, state.stats)
    for m in MODALITIES:
        labels = {"model": "water", "version": "1", "modality": m}
        points = registry.get_sample_value("quality_selfcheck_points_total", labels)
        assert points == int(check.scored[m].sum()) > 0
        total = registry.get_sample_value("quality_selfcheck_abs_error_total", labels)
        assert total == pytest.approx(mae[m] * points) and 0 < mae[m] < 10, (m, mae[m])


def test_selfcheck_cost(manifest: Manifest, pre: Preprocessing, body: dict, water_repository: Path) -> None:
    """What a sampled request adds: the check's inputs on the work pool and one more inference."""
    plain_state, checked_state = _state(pre, 0.0)[0], _state(pre, 1.0)[0]
    request = ReconstructRequest.model_validate(body)
    runtime = open_runtime(water_repository / "water" / "1", manifest.graphs["model"], "cpu", cpu_threads=1)

    def best(fn, repeat: int = 5) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    plain = prepare_request(request, plain_state)
    prep_plain = best(lambda: prepare_request(request, plain_state))
    prep_checked = best(lambda: prepare_request(request, checked_state))
    infer = best(lambda: runtime.run(plain.inputs))
    print(f"water self-check cost (2 samples): preprocessing {prep_plain * 1000:.2f} -> {prep_checked * 1000:.2f} "
          f"ms, + one inference {infer * 1000:.2f} ms on the sampled request")
    assert prep_checked - prep_plain < max(5 * prep_plain, 0.05)


@pytest.fixture(scope="module")
def server(serve, water_repository: Path) -> LiveServer:
    return serve(water_repository, env={"SERVICE_WATER_QUALITY_SELFCHECK_FRACTION": "1.0"})


def test_live_selfcheck_and_drift_metrics(server: LiveServer, body: dict, pre: Preprocessing) -> None:
    response = hostile_request(server, lambda c: c.post("/water/reconstruct", json=body), max_seconds=20,
                               report=REPORT, name="water reconstruct, self-checked")
    assert response.status_code == 200, response.text
    parsed = prepare_request(ReconstructRequest.model_validate(body), _state(pre, 0.0)[0])
    returned = response.json()["samples"][0]
    # Never returned: the hidden patches are the request's own, and sent values come back unchanged.
    assert np.array_equal(np.array(returned["hidden"]["precip"]), parsed.tokens["precip"][0])
    assert returned["evap"] == body["samples"][0]["evap"]
    text = httpx.get(f"{server.url}/metrics").text
    for m in MODALITIES:
        labels = {"model": "water", "modality": m}
        assert metric_value(text, "quality_selfcheck_points_total", labels) > 0, m
        assert metric_value(text, "quality_selfcheck_abs_error_total", labels) > 0, m
        stat = {"model": "water", "statistic": missing_statistic(m)}
        values = int(np.prod(pre.grid.shape(m))) * 2
        assert metric_value(text, "quality_input_statistic_count_total", stat) == values
        missing = sum(int(p.missing[m].sum()) for p in parsed.samples)
        assert metric_value(text, "quality_input_statistic_sum_total", stat) == missing
        assert metric_value(text, "quality_training_statistic_std", stat) > 0
