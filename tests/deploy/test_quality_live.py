"""The "Model quality" dashboard and the quality alerts against the real Prometheus (issue 16).

The service serves traffic, weld, water and imagecodec (both sampled checks at fraction 1.0); two rounds
of: traffic forecasts, then observations for their target times (ground truth), weld classifications of a
gallery sample and of an input far from the gallery, one water reconstruction (self-check, missing-share
drift) and one compression (bpp, PSNR), with scrapes in between.
Then EVERY query of the model-quality dashboard and the signal of every quality
alert must return finite data: the forecast error per horizon is read back through the dashboard's queries.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from families.manifest import Manifest
from families.water.contract import Preprocessing
from families.weld.preprocessing import PreprocessParams
from service.families.water.schemas import reconstruct_example
from tests.fixtures.deploy_prometheus import Prometheus, finite, scraping
from tests.fixtures.deploy_support import alert_rules, panel_queries, prometheus_binary, split_comparison, substitute
from training.weld.data import read_manifest

pytestmark = pytest.mark.prometheus
BOARD = "model-quality.json"
ADMIN_TOKEN = "quality-live-token"


@pytest.fixture
def stack(live_server: Callable, traffic_repository: Path, weld_repository: Path, water_repository: Path,
          imagecodec_repository: Path, tmp_path: Path) -> Iterator[tuple[str, Path, Prometheus]]:
    binary = prometheus_binary()
    repository = tmp_path / "repository"
    for source in (traffic_repository, weld_repository, water_repository, imagecodec_repository):
        for model_dir in source.iterdir():
            shutil.copytree(model_dir, repository / model_dir.name)
    server = live_server(repository, env={"SERVICE_WATER_QUALITY_SELFCHECK_FRACTION": "1.0",
                                          "SERVICE_IMAGECODEC_QUALITY_PSNR_FRACTION": "1.0",
                                          "SERVICE_ADMIN_TOKEN": ADMIN_TOKEN})  # observations are a write
    with scraping(binary, tmp_path, server.port) as prometheus:
        yield server.url, repository, prometheus


def drive_quality(client: httpx.Client, repository: Path, weld_data: Path, round_: int) -> None:
    sensors = list(Manifest.read(repository / "traffic" / "1").preprocessing["sensor_ids"])
    origin = datetime(2012, 3, 5, 8, 0) + timedelta(hours=round_)
    values = np.random.default_rng(round_).uniform(30, 60, size=(len(sensors), 12)).round(1).tolist()
    window = {"sensor_ids": sensors, "values": values, "last_timestamp": origin.isoformat()}
    assert client.post("/traffic/forecast", json={"windows": [window]}).status_code == 200
    stamps = [(origin + timedelta(minutes=5 * h)).isoformat() for h in range(1, 13)]
    actual = {"windows": [{"sensor_ids": sensors, "timestamps": stamps, "values": [[45.0] * 12] * len(sensors)}]}
    observed = client.post("/traffic/observations", json=actual, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert observed.status_code == 200 and observed.json()["matched"] > 0, observed.text

    record = [r for r in read_manifest(weld_data) if r.split == "TRAIN"][0]
    parts = [("video", (record.video_path().name, record.video_path().read_bytes(), "video/x-msvideo")),
             ("audio", (record.audio_path().name, record.audio_path().read_bytes(), "audio/flac")),
             ("sensors", (record.sensor_path().name, record.sensor_path().read_bytes(), "text/csv"))]
    parts += [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in record.photo_paths()]
    assert client.post("/weld/classify", files=parts).status_code == 200
    params = PreprocessParams.from_dict(Manifest.read(repository / "weld" / "1").preprocessing["params"])
    far = {"samples": [{m: np.full(s, 1e4).tolist() for m, s in params.shapes().items()}]}
    answer = client.post("/weld/classify", content=json.dumps(far), headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    drive_water_and_codec(client, repository, round_)


def drive_water_and_codec(client: httpx.Client, repository: Path, round_: int) -> None:
    from PIL import Image

    pre = Manifest.read(repository / "water" / "1").preprocessing_as(Preprocessing)
    water = client.post("/water/reconstruct", json=reconstruct_example(pre))
    assert water.status_code == 200, water.text
    pixels = np.random.default_rng(round_).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    compressed = client.post("/image/compress", files={"image": ("x.png", png.getvalue(), "image/png")})
    assert compressed.status_code == 200, compressed.text


def test_quality_dashboard_and_alerts_read_back(stack: tuple[str, Path, Prometheus], weld_data: Path,
                                                subtests: pytest.Subtests) -> None:
    url, repository, prometheus = stack
    with httpx.Client(base_url=url, timeout=60) as client:
        for round_ in range(2):
            drive_quality(client, repository, weld_data, round_)
            prometheus.wait_scrape_after(time.time())

    per_horizon = prometheus.query(
        'sum by (horizon) (quality_forecast_points_total{job="inference", predictor="model"})')
    assert {s["metric"]["horizon"] for s in per_horizon} == {str(h) for h in range(1, 13)}, per_horizon

    queries = [q for q in panel_queries() if q.dashboard == BOARD]
    assert len(queries) >= 10
    for panel in queries:
        with subtests.test(msg=f"{panel.panel} / {panel.ref}"):
            result = prometheus.query(substitute(panel.expr))
            assert result, f"no data for {panel.expr}"
            assert finite(result), f"only NaN/Inf for {panel.expr}: {result}"

    rules = [r for r in alert_rules() if "quality_" in r["expr"]]
    assert {r["alert"] for r in rules} == {"TrafficForecastWorseThanNaive", "WeldOutOfDistribution", "InputDrift"}
    for rule in rules:
        with subtests.test(msg=f"alert {rule['alert']}"):
            signal, _, _ = split_comparison(rule["expr"])
            prometheus.query(rule["expr"])
            result = prometheus.query(signal.replace("[30m]", "[1m]").replace("[10m]", "[1m]"))
            assert result, f"{rule['alert']}: no data for its signal {signal}"
            assert finite(result), f"{rule['alert']}: only NaN/Inf for {signal}: {result}"
