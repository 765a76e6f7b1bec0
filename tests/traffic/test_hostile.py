"""Hostile and careless clients of POST /traffic/forecast on a live service process (issue 11).

Each case runs through `hostile_request`: its status, a time bound, the event-loop-lag bound (health
pings every 10 ms) and a peak-RSS-growth bound. One module-scoped server (`serve`) keeps the file fast.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.harness import LiveServer
from families.manifest import Manifest
from families.traffic.contract import Preprocessing
from families.traffic.preprocessing import Scaler
from service.errors import InvalidInput
from service.families.traffic.routes import prepare_window
from service.families.traffic.schemas import ForecastResponse, ForecastWindow
from tests.fixtures.hostile import hostile_request

STEP = np.timedelta64(300, "s")
REPORT: list[tuple[str, int, float, float, float]] = []


@pytest.fixture(scope="module")
def server(serve, traffic_repository: Path) -> LiveServer:
    return serve(traffic_repository)


@pytest.fixture(scope="module")
def sensor_ids(traffic_repository: Path) -> list[str]:
    return list(Manifest.read(traffic_repository / "traffic" / "1").preprocessing["sensor_ids"])


def _window(ids: list[str], **time_reference: Any) -> dict[str, Any]:
    values = np.random.default_rng(0).uniform(20, 70, size=(len(ids), 12)).round(1).tolist()
    return {"sensor_ids": ids, "values": values, **(time_reference or {"last_timestamp": "2012-03-05T08:55:00"})}


def _post(payload: Any, **headers: str):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda client: client.post("/traffic/forecast", content=content,
                                      headers={"content-type": "application/json", **headers})


def _error(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def test_valid_request_still_forecasts(server: LiveServer, sensor_ids: list[str]) -> None:
    r = hostile_request(server, _post({"windows": [_window(sensor_ids)] * 8}), max_seconds=5,
                        report=REPORT, name="valid, 8 windows")
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["forecasts"]) == 8 and body["forecasts"][0]["timestamps"][0] == "2012-03-05T09:00:00"
    assert np.isfinite(np.array(body["forecasts"][0]["values"])).all()
    ForecastResponse.model_validate_json(r.content)


def test_twenty_thousand_duplicate_ids_refused_before_parsing(server: LiveServer, sensor_ids: list[str]) -> None:
    """Was a 4.1 s event-loop freeze: far more values than any valid request to a 12-sensor model holds."""
    window = _window([sensor_ids[0]] * 20_000)
    r = hostile_request(server, _post({"windows": [window]}), max_seconds=2, max_lag_s=0.1, max_rss_mb=60,
                        report=REPORT, name="20,000 duplicate ids")
    assert r.status_code == 413, r.text
    assert "holds at most" in _error(r) and r.json()["error"]["details"]["limit"] < 260_000


def test_duplicate_ids_under_the_value_cap_are_a_fast_422(server: LiveServer, sensor_ids: list[str]) -> None:
    window = {**_window([sensor_ids[0]] * 1_200), "values": [[50.0]] * 1_200}
    r = hostile_request(server, _post({"windows": [window]}), max_seconds=2, max_lag_s=0.1,
                        report=REPORT, name="1,200 duplicate ids")
    assert r.status_code == 422, r.text
    assert "duplicate sensor id(s)" in _error(r) and r.json()["error"]["details"]["field"] == "sensor_ids"


def test_duplicate_id_check_is_linear(sensor_ids: list[str]) -> None:
    """The check itself (not only the body cap): 20,000 copies of one id take milliseconds, not seconds."""
    pre = Preprocessing(sensor_ids=sensor_ids, scaler=Scaler(50.0, 10.0), features=["speed", "time_of_day"],
                        step_seconds=300, input_steps=12, horizon=12)
    window = ForecastWindow(sensor_ids=[sensor_ids[0]] * 20_000, values=[[50.0] * 12] * 20_000,
                            last_timestamp=datetime(2012, 3, 5, 8, 55))
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="duplicate sensor id"):
        prepare_window(0, window, pre)
    assert time.perf_counter() - started < 0.2


@pytest.mark.parametrize(("name", "reference", "field"), [
    ("year 9999 (was 500)", {"last_timestamp": "9999-12-31T23:55:00"}, "last_timestamp"),
    ("year 2300 (was 200, wrapped features)", {"last_timestamp": "2300-06-04T07:55:00"}, "last_timestamp"),
    ("horizon crosses 2200", {"last_timestamp": "2199-12-31T23:30:00"}, "last_timestamp"),
    ("window starts before 1970", {"last_timestamp": "1970-01-01T00:50:00"}, "last_timestamp"),
    ("year 1 with an offset", {"last_timestamp": "0001-01-01T00:00:00+05:00"}, "last_timestamp"),
    ("timestamps in 2300", {"timestamps": [str(np.datetime64("2300-06-04T07:00:00") + k * STEP) for k in range(12)]},
     "timestamps"),
])
def test_timestamps_outside_the_supported_range_are_422(server: LiveServer, sensor_ids: list[str], name: str,
                                                         reference: dict[str, Any], field: str) -> None:
    r = hostile_request(server, _post({"windows": [_window(sensor_ids, **reference)]}), max_seconds=2,
                        max_lag_s=0.1, max_rss_mb=60, report=REPORT, name=name)
    assert r.status_code == 422, r.text
    assert f"windows[0].{field}" in _error(r) and "1970-01-01T00:00:00 .. 2200-01-01T00:00:00" in _error(r)
    assert r.json()["error"]["details"]["max"] == "2199-12-31T23:00:00"


def test_edges_of_the_supported_range_are_served(server: LiveServer, sensor_ids: list[str]) -> None:
    windows = [_window(sensor_ids, last_timestamp="1970-01-01T00:55:00"),
               _window(sensor_ids, last_timestamp="2199-12-31T23:00:00")]
    r = hostile_request(server, _post({"windows": windows}), max_seconds=5, report=REPORT, name="range edges")
    assert r.status_code == 200, r.text
    assert r.json()["forecasts"][1]["timestamps"][-1] == "2200-01-01T00:00:00"


def test_text_plain_is_415(server: LiveServer, sensor_ids: list[str]) -> None:
    content = json.dumps({"windows": [_window(sensor_ids)]})
    r = hostile_request(server, lambda c: c.post("/traffic/forecast", content=content,
                                                 headers={"content-type": "text/plain"}),
                        max_seconds=2, max_lag_s=0.1, max_rss_mb=60, report=REPORT, name="text/plain")
    assert r.status_code == 415, r.text


@pytest.mark.parametrize(("name", "content"), [
    ("truncated JSON", b'{"windows": [{"sensor_ids": ["a"'),
    ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000),
])
def test_malformed_json_is_400(server: LiveServer, name: str, content: bytes) -> None:
    r = hostile_request(server, _post(content), max_seconds=2, max_lag_s=0.1, max_rss_mb=60, report=REPORT,
                        name=name)
    assert r.status_code == 400, r.text


def test_eight_megabytes_of_zeros_refused_before_parsing(server: LiveServer, sensor_ids: list[str]) -> None:
    """Parsed, 4M values would cost ~300 MB and 0.5 s of a worker."""
    content = (b'{"windows": [{"sensor_ids": ["%s"], "last_timestamp": "2012-03-05T08:55:00", "values": [['
               % sensor_ids[0].encode() + b"0," * 4_000_000 + b"0]]}]}")
    r = hostile_request(server, _post(content), max_seconds=3, max_lag_s=0.1, max_rss_mb=80, report=REPORT,
                        name="8 MB of zeros")
    assert r.status_code == 413, r.text

