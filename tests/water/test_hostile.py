"""Hostile and careless clients of POST /water/reconstruct on a live service process (issue 11).

Each case runs through `hostile_request`: its status, a time bound, the event-loop-lag bound (health
pings every 10 ms) and a peak-RSS-growth bound. One module-scoped server keeps the file fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.harness import LiveServer
from families.manifest import Manifest
from families.water.contract import Grid, Preprocessing
from families.water.preprocessing import MODALITIES
from service.families.water.schemas import (
    MAX_JSON_VALUES,
    MAX_SAMPLES_PER_REQUEST,
    ReconstructResponse,
    max_json_values,
)
from tests.fixtures.hostile import hostile_request
from training.water.data import generate

REPORT: list[tuple[str, int, float, float, float]] = []


@pytest.fixture(scope="module")
def server(serve, water_repository: Path) -> LiveServer:
    return serve(water_repository)


@pytest.fixture(scope="module")
def grid(water_repository: Path) -> Grid:
    return Manifest.read(water_repository / "water" / "1").preprocessing_as(Preprocessing).grid


@pytest.fixture(scope="module")
def sample(grid: Grid) -> dict[str, Any]:
    """One sample of the served grid size with a block of missing days in precip."""
    data = generate(1, grid.height, grid.width, seed=5)
    out = {m: data.fields[m][0].astype(float).tolist() for m in MODALITIES}
    out["precip"][1] = [[None] * grid.width] * grid.height
    return {**out, "static": data.static[0].astype(float).tolist()}


def _post(payload: Any, content_type: str = "application/json", **headers: str):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda client: client.post("/water/reconstruct", content=content,
                                      headers={"content-type": content_type, **headers})


def _error(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def test_valid_request_still_reconstructs(server: LiveServer, sample: dict[str, Any]) -> None:
    r = hostile_request(server, _post({"samples": [sample]}), max_seconds=10, report=REPORT, name="valid")
    assert r.status_code == 200, r.text
    result = r.json()["samples"][0]
    assert np.array(result["mask"]["precip"])[1].all() and np.isfinite(np.array(result["precip"], float)).all()
    assert result["temp"] == sample["temp"]
    ReconstructResponse.model_validate_json(r.content)  # the piecewise body is the documented schema


def test_largest_valid_request_stays_off_the_loop(server: LiveServer, sample: dict[str, Any]) -> None:
    """64 samples (the schema's maximum): parsing, the prior and the response body run on the work pool."""
    r = hostile_request(server, _post({"samples": [sample] * MAX_SAMPLES_PER_REQUEST}), max_seconds=30, max_rss_mb=250,
                        report=REPORT, name="64 samples (largest valid)")
    assert r.status_code == 200, r.text
    assert len(r.json()["samples"]) == MAX_SAMPLES_PER_REQUEST == 64


def test_megabytes_of_zeros_refused_before_parsing(server: LiveServer, grid: Grid) -> None:
    """A JSON bomb: 8 MB of zeros in one grid parsed to ~300 MB of Python floats (64 MB: ~2.4 GB, 4 s)."""
    content = b'{"samples": [{"static": [1], "precip": [[[' + b"0," * 4_000_000 + b"0]]]}]}"
    r = hostile_request(server, _post(content), max_seconds=3, max_lag_s=0.1, max_rss_mb=60, report=REPORT,
                        name="8 MB of zeros")
    assert r.status_code == 413, r.text
    limit = r.json()["error"]["details"]["limit"]
    assert limit == max_json_values(grid) < MAX_JSON_VALUES and str(limit) in _error(r)


def test_oversized_grid_under_the_cap_is_a_bounded_422(server: LiveServer, sample: dict[str, Any],
                                                       grid: Grid) -> None:
    """Under the value cap the parse cost is what a valid request may cost; the shape check names the grid."""
    frames = grid.frames * 8
    big = {**sample, "soil": [[[0.5] * grid.width] * grid.height] * frames}
    r = hostile_request(server, _post({"samples": [big]}), max_seconds=3, max_lag_s=0.1, max_rss_mb=120,
                        report=REPORT, name=f"soil with {frames} frames")
    assert r.status_code == 422, r.text
    assert f"soil grid size is [{frames}, {grid.height}, {grid.width}]" in _error(r)


def test_too_many_samples_is_422(server: LiveServer) -> None:
    tiny = {"static": [1.0] * 11, "evap": [1.0]}
    r = hostile_request(server, _post({"samples": [tiny] * 65}), max_seconds=2, max_lag_s=0.1, max_rss_mb=60,
                        report=REPORT, name="65 samples")
    assert r.status_code == 422, r.text
    assert "samples" in _error(r)


def test_infinite_value_is_422(server: LiveServer, sample: dict[str, Any]) -> None:
    # A number beyond float32 is valid JSON that becomes infinite in the model's dtype: named (422). The literal
    # `Infinity` is not JSON at all: 400, as for every body (issue 26 item 9).
    content = json.dumps({"samples": [{**sample, "evap": [1e39] * len(sample["evap"])}]}).encode()
    r = hostile_request(server, _post(content), max_seconds=3, max_lag_s=0.1, max_rss_mb=60, report=REPORT,
                        name="Infinity in evap")
    assert r.status_code == 422, r.text
    assert "evap" in _error(r) and "Inf" in _error(r), _error(r)
    literal = json.dumps({"samples": [{**sample, "evap": [float("inf")] * len(sample["evap"])}]}).encode()
    r = hostile_request(server, _post(literal), max_seconds=3, max_lag_s=0.1, max_rss_mb=60, report=REPORT,
                        name="Infinity literal in evap")
    assert r.status_code == 400 and "NaN and Infinity are not JSON" in r.json()["error"]["message"], r.text


def test_text_plain_is_415(server: LiveServer, sample: dict[str, Any]) -> None:
    r = hostile_request(server, _post({"samples": [sample]}, content_type="text/plain"), max_seconds=2,
                        max_lag_s=0.1, max_rss_mb=60, report=REPORT, name="text/plain")
    assert r.status_code == 415, r.text


@pytest.mark.parametrize(("name", "content"), [
    ("truncated JSON", b'{"samples": [{"static": [1.0'),
    ("deeply nested JSON", b'{"samples": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("empty body", b""),
])
def test_malformed_json_is_400(server: LiveServer, name: str, content: bytes) -> None:
    r = hostile_request(server, _post(content), max_seconds=2, max_lag_s=0.1, max_rss_mb=60, report=REPORT,
                        name=name)
    assert r.status_code == 400, r.text
