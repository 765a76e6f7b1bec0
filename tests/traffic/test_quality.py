"""Live traffic forecast quality (issue 16): forecasts kept, observations scored per horizon step against the
model and the last-value baseline, late / duplicate / unmatched counted; drift inputs; hostile observations.

The store itself is tested directly (exact numbers); the endpoint on one module-scoped live server (`serve`).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from benchmarks.harness import LiveServer
from families.manifest import Manifest
from families.traffic.contract import training_statistics
from service.families.traffic.metrics import TrafficMetrics
from service.families.traffic.quality import ForecastStore, last_non_missing
from tests.fixtures.hostile import hostile_request

STEP_NS = 300 * 10**9
REPORT: list[tuple[str, int, float, float, float]] = []
ORIGIN = datetime(2012, 3, 5, 8, 55)
TOKEN = "observations-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


# ---- the store, directly --------------------------------------------------------------------------------

def _store(horizon: int = 3, sensors: int = 2, **kw: Any) -> tuple[ForecastStore, CollectorRegistry]:
    registry = CollectorRegistry()
    args = {"max_forecasts": 100, "max_bytes": 1e9, "ttl_s": 3600.0, **kw}
    return ForecastStore(TrafficMetrics(registry), "traffic", "1", horizon=horizon, sensors=sensors,
                         step_seconds=300, **args), registry


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"model": "traffic", "version": "1", **labels}) or 0.0


def test_scoring_per_horizon_against_model_and_last_value() -> None:
    store, registry = _store()
    speeds = np.array([[[50.0, 0.0], [60.0, 40.0]]])  # (W=1, T=2, N=2): sensor 0's newest is 60, 1's is 40
    y = np.array([[[[62.0], [41.0]], [[64.0], [42.0]], [[66.0], [43.0]]]])  # (1, H=3, N=2, 1)
    store.remember(np.array([0]), speeds, y)
    totals = store.score(np.array([STEP_NS, 2 * STEP_NS]), np.array([[61.0, 0.0], [60.0, 45.0]]))
    assert dict(+totals.outcomes) == {"matched": 3, "missing": 1}
    # h=1: sensor 0 actual 61: model |62-61| = 1, naive |60-61| = 1; h=2: sensors 64/42 vs 60/45, naive 60/40.
    assert _sample(registry, "quality_forecast_abs_error_total", horizon="1", predictor="model") == 1.0
    assert _sample(registry, "quality_forecast_abs_error_total", horizon="2", predictor="model") == 4 + 3
    assert _sample(registry, "quality_forecast_abs_error_total", horizon="2", predictor="last_value") == 0 + 5
    assert _sample(registry, "quality_forecast_squared_error_total", horizon="2", predictor="model") == 16 + 9
    assert _sample(registry, "quality_forecast_points_total", horizon="2", predictor="model") == 2
    assert _sample(registry, "quality_forecast_abs_percentage_error_total", horizon="2",
                   predictor="model") == pytest.approx(4 / 60 + 3 / 45)
    again = store.score(np.array([2 * STEP_NS]), np.array([[60.0, 45.0]]))
    assert dict(+again.outcomes) == {"duplicate": 2}
    assert _sample(registry, "quality_forecast_points_total", horizon="2", predictor="model") == 2


def test_unmatched_and_late_are_counted_not_scored() -> None:
    store, registry = _store(max_forecasts=1)
    speeds, y = np.full((1, 2, 2), 50.0), np.full((1, 3, 2, 1), 50.0)
    store.remember(np.array([0]), speeds, y)
    store.remember(np.array([100 * STEP_NS]), speeds, y)  # evicts the first (count bound 1)
    assert len(store) == 1
    late = store.score(np.array([2 * STEP_NS]), np.array([[51.0, 52.0]]))
    assert dict(+late.outcomes) == {"late": 2}
    unmatched = store.score(np.array([500 * STEP_NS]), np.array([[51.0, np.nan]]))  # sensor 1 not sent
    assert dict(+unmatched.outcomes) == {"unmatched": 1}
    assert _sample(registry, "quality_observations_total", outcome="late") == 2
    assert _sample(registry, "quality_forecasts_stored") == 1


def test_store_bounds_memory_and_age() -> None:
    store, _ = _store(horizon=12, sensors=1000, max_bytes=1_000_000)
    assert store.capacity == 1_000_000 // (12 * 1000 * 5 + 4000 + 200)
    aged, _ = _store(ttl_s=1e-9)
    aged.remember(np.array([0]), np.full((1, 2, 2), 50.0), np.full((1, 3, 2, 1), 50.0))
    assert dict(+aged.score(np.array([STEP_NS]), np.array([[50.0, 50.0]])).outcomes) == {"late": 2}


def test_last_value_and_training_statistics() -> None:
    speeds = np.array([[[10.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
    np.testing.assert_array_equal(last_non_missing(speeds)[0, :2], [10.0, 5.0])
    assert np.isnan(last_non_missing(speeds)[0, 2])
    values = np.array([0.0, 0.0, 40.0, 60.0])  # scaler counts the zeros: mean 25
    stats = training_statistics(0.5, float(values.mean()), float(values.std()))
    assert stats["mean_speed"].mean == pytest.approx(50.0)
    assert stats["mean_speed"].std == pytest.approx(10.0)
    assert stats["missing_fraction"].model_dump() == {"mean": 0.5, "std": 0.5}


# ---- the endpoint on a live server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(serve, traffic_repository: Path) -> LiveServer:
    return serve(traffic_repository, env={"SERVICE_ADMIN_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def sensor_ids(traffic_repository: Path) -> list[str]:
    return list(Manifest.read(traffic_repository / "traffic" / "1").preprocessing["sensor_ids"])


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _observe(payload: Any, content_type: str = "application/json", auth: dict[str, str] | None = None):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda client: client.post("/traffic/observations", content=content,
                                      headers={"content-type": content_type, **(AUTH if auth is None else auth)})


def test_forecast_then_observations_export_error_per_horizon(server: LiveServer, sensor_ids: list[str]) -> None:
    values = np.random.default_rng(1).uniform(30, 60, size=(len(sensor_ids), 12)).round(1).tolist()
    window = {"sensor_ids": sensor_ids, "values": values, "last_timestamp": ORIGIN.isoformat()}
    forecast = httpx.post(f"{server.url}/traffic/forecast", json={"windows": [window]}, timeout=30)
    assert forecast.status_code == 200, forecast.text
    stamps = [(ORIGIN + timedelta(minutes=5 * h)).isoformat() for h in range(1, 13)]
    actual = {"windows": [{"sensor_ids": sensor_ids, "timestamps": stamps,
                           "values": [[45.0] * 12 for _ in sensor_ids]}]}
    answer = hostile_request(server, _observe(actual), max_seconds=5, report=REPORT, name="observations 12 steps")
    assert answer.status_code == 200, answer.text
    assert answer.json()["matched"] == 12 * len(sensor_ids) and answer.json()["late"] == 0
    repeat = httpx.post(f"{server.url}/traffic/observations", json=actual, headers=AUTH, timeout=30).json()
    assert repeat["duplicate"] == 12 * len(sensor_ids) and repeat["matched"] == 0
    text = httpx.get(f"{server.url}/metrics").text
    for h in range(1, 13):
        for predictor in ("model", "last_value"):
            points = _metric(text, "quality_forecast_points_total", horizon=str(h), predictor=predictor)
            assert points == len(sensor_ids)
    naive = _metric(text, "quality_forecast_abs_error_total", horizon="1", predictor="last_value")
    assert naive == pytest.approx(sum(abs(row[-1] - 45.0) for row in values), rel=1e-6)
    assert _metric(text, "quality_observations_total", outcome="duplicate") == 12 * len(sensor_ids)
    assert _metric(text, "quality_forecasts_stored") >= 1
    # Drift inputs: training statistics from the manifest, live sums from the forecast's readings.
    assert _metric(text, "quality_training_statistic_mean", statistic="mean_speed") > 0
    assert _metric(text, "quality_input_statistic_count_total", statistic="missing_fraction") == 12 * len(sensor_ids)


def test_unmatched_observation_is_counted(server: LiveServer, sensor_ids: list[str]) -> None:
    body = {"windows": [{"sensor_ids": sensor_ids[:1], "last_timestamp": "2030-01-01T00:00:00", "values": [[50]]}]}
    answer = hostile_request(server, _observe(body), report=REPORT, name="unmatched observation")
    assert answer.status_code == 200 and answer.json()["unmatched"] == 1


@pytest.mark.parametrize(("name", "make", "status", "pattern"), [
    ("unknown sensor", lambda ids: {"windows": [{"sensor_ids": ["nope"], "last_timestamp": "2012-03-05T09:00:00",
                                                 "values": [[50]]}]}, 422, r"windows\[0\]\.sensor_ids: unknown"),
    ("negative speed", lambda ids: {"windows": [{"sensor_ids": ids[:1], "last_timestamp": "2012-03-05T09:00:00",
                                                 "values": [[-5]]}]}, 422, r"values\[0\]\[0\]"),
    ("year 1 overflow", lambda ids: {"windows": [{"sensor_ids": ids[:1], "last_timestamp": "0001-01-01T00:00:00",
                                                  "values": [[50, 50]]}]}, 422, r"last_timestamp: readings"),
    ("ragged rows", lambda ids: {"windows": [{"sensor_ids": ids[:2], "last_timestamp": "2012-03-05T09:00:00",
                                              "values": [[50, 51], [50]]}]}, 422, r"values\[1\]"),
    ("too many steps", lambda ids: {"windows": [{"sensor_ids": ids[:1], "last_timestamp": "2012-03-05T09:00:00",
                                                 "values": [[50] * 289]}]}, 422, r"1\.\.288"),
    ("off-grid timestamps", lambda ids: {"windows": [{"sensor_ids": ids[:1], "values": [[50, 50]], "timestamps": [
        "2012-03-05T09:00:00", "2012-03-05T09:01:00"]}]}, 422, r"one model step"),
])
def test_bad_observations_are_4xx(server: LiveServer, sensor_ids: list[str], name: str, make: Any, status: int,
                                  pattern: str) -> None:
    answer = hostile_request(server, _observe(make(sensor_ids)), report=REPORT, name=name)
    assert answer.status_code == status, answer.text
    assert re.search(pattern, answer.json()["error"]["message"]), answer.text


def test_oversized_and_non_json_observations(server: LiveServer) -> None:
    huge = b'{"windows": [' + b",".join([b'{"sensor_ids": ["x"], "values": [[1]]}'] * 400_000) + b"]}"
    answer = hostile_request(server, _observe(huge), max_seconds=10, report=REPORT, name="16 MB of observations")
    assert answer.status_code == 413, answer.text
    assert hostile_request(server, _observe(b"a,b", "text/csv"), report=REPORT, name="csv").status_code == 415


# ---- issue 26: observations are an authenticated, bounded write -------------------------------------------

def test_observations_need_the_admin_token(server: LiveServer, sensor_ids: list[str]) -> None:
    """Issue 26 item 6: without the token nothing is scored (the metrics, and so the alerts, do not move)."""
    body = {"windows": [{"sensor_ids": sensor_ids[:1], "last_timestamp": "2031-01-01T00:00:00", "values": [[50]]}]}
    before = _metric(httpx.get(f"{server.url}/metrics").text, "quality_observations_total")
    missing = hostile_request(server, _observe(body, auth={}), report=REPORT, name="observations without token")
    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = hostile_request(server, _observe(body, auth={"authorization": "Bearer nope"}), report=REPORT,
                            name="observations with a wrong token")
    assert wrong.status_code == 403, wrong.text
    basic = hostile_request(server, _observe(body, auth={"authorization": f"Basic {TOKEN}"}), report=REPORT,
                            name="observations with another scheme")
    assert basic.status_code == 401, basic.text
    assert _metric(httpx.get(f"{server.url}/metrics").text, "quality_observations_total") == before
    assert hostile_request(server, _observe(body), report=REPORT, name="observations with the token").status_code == 200
    assert _metric(httpx.get(f"{server.url}/metrics").text, "quality_observations_total") == before + 1


def test_observations_are_off_without_a_configured_token(asgi_service, traffic_repository: Path,
                                                         sensor_ids: list[str]) -> None:
    """As for enrolment: a server without SERVICE_ADMIN_TOKEN has no observation route (404), whatever is sent."""
    service = asgi_service(traffic_repository)
    body = {"windows": [{"sensor_ids": sensor_ids[:1], "last_timestamp": "2031-01-01T00:00:00", "values": [[50]]}]}
    for headers in ({}, AUTH):
        answer = service.post("/traffic/observations", json=body, headers=headers)
        assert answer.status_code == 404 and "admin API is disabled" in answer.text, answer.text
    assert service.get("/traffic/sensors").status_code == 200  # the read-only routes stay open


def test_observation_value_cap_is_the_forecasts_absolute_cap(traffic_repository: Path) -> None:
    """Issue 26 item 7: with METR-LA's 207 sensors the per-model bound (~7.7M values) was above the absolute
    cap, so a 4.5M-value body was parsed (8.5 s) before its 422. It must be 413 before parsing, fast."""
    from families.traffic.contract import Preprocessing
    from service.dataplane.bodies import validate_json
    from service.errors import PayloadTooLarge
    from service.families.traffic.routes import TrafficState
    from service.families.traffic.schemas import MAX_JSON_VALUES, ObservationRequest

    tiny = Preprocessing.model_validate(Manifest.read(traffic_repository / "traffic" / "1").preprocessing)
    metr_la = tiny.model_copy(update={"sensor_ids": [str(700_000 + i) for i in range(207)]})
    state = TrafficState(preprocessing=metr_la, store=None)  # type: ignore[arg-type] - the bound reads no store
    assert state.max_observation_values <= MAX_JSON_VALUES
    assert state.max_json_values <= MAX_JSON_VALUES
    # A body of 4.5M readings in the observation format (64 windows of 207 sensors x ~340 steps).
    row = b"[" + b",".join([b"50.0"] * 340) + b"]"
    window = (b'{"sensor_ids": [' + b",".join(b'"%d"' % (700_000 + i) for i in range(207))
              + b'], "last_timestamp": "2012-03-05T08:55:00", "values": [' + b",".join([row] * 207) + b"]}")
    body = b'{"windows": [' + b",".join([window] * 64) + b"]}"
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as refused:
        validate_json(ObservationRequest, body, state.max_observation_values, "traffic observations")
    assert time.perf_counter() - started < 1.0  # counted on the raw bytes, never parsed
    assert refused.value.details["values"] > 4_500_000 and refused.value.details["limit"] <= MAX_JSON_VALUES
