"""Metrics that add up, through the real Prometheus server with deploy/ray/prometheus.yml: the project's
prometheus.yml and alerts.yml, the `inference` job reading the Ray replicas' file_sd folder (written by
deploy/ray/metrics_targets.py) instead of a static target. 60 forecasts through the ingress; Prometheus' sum
over the replicas' request counters must be 60 exactly, per replica equal to what the X-Replica headers say;
every dashboard panel and alert rule must still evaluate with one series per replica (no many-to-many
matching), and the request panels return data."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.harness import ROOT
from tests.fixtures.deploy_prometheus import SCRAPE_S, Prometheus
from tests.fixtures.deploy_support import (
    ALERTS_YML,
    PROMETHEUS_YML,
    alert_rules,
    metric_names,
    panel_queries,
    prometheus_binary,
    substitute,
)

pytestmark = [pytest.mark.ray, pytest.mark.prometheus]
N = 60
ENDPOINT = "/traffic/forecast"
COUNT = f'inference_request_duration_seconds_count{{job="inference", endpoint="{ENDPOINT}"}}'
REQUEST_METRICS = {"inference_request_duration_seconds_count", "inference_request_duration_seconds_bucket",
                   "inference_requests_total", "http_requests_in_flight", "up"}


RAY_PROMETHEUS_YML = ROOT / "deploy" / "ray" / "prometheus.yml"


def ray_scrape_config(targets_dir: Path, prometheus_port: int) -> dict:
    """deploy/ray/prometheus.yml for this test: its file_sd folder `targets_dir`, 1 s scrapes, absolute paths."""
    config = yaml.safe_load(RAY_PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    config["rule_files"] = [str((RAY_PROMETHEUS_YML.parent / f).resolve()) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.update(scrape_interval=f"{SCRAPE_S}s", scrape_timeout=f"{SCRAPE_S}s")
        if job["job_name"] == "inference":
            (sd,) = job["file_sd_configs"]
            sd.update(files=[str(targets_dir / "*.json")], refresh_interval="1s")
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return config


def test_ray_prometheus_config_reads_the_default_targets_folder_and_the_project_rules() -> None:
    config = yaml.safe_load(RAY_PROMETHEUS_YML.read_text())
    project = yaml.safe_load(PROMETHEUS_YML.read_text())
    serve_args = yaml.safe_load((ROOT / "deploy" / "ray" / "serve_config.yaml").read_text())["applications"][0]["args"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "inference"]
    (pattern,) = job["file_sd_configs"][0]["files"]
    assert (RAY_PROMETHEUS_YML.parent / pattern).resolve().parent == (ROOT / serve_args["metrics_dir"]).resolve()
    assert [(RAY_PROMETHEUS_YML.parent / f).resolve() for f in config["rule_files"]] == [ALERTS_YML.resolve()]
    (static,) = [j for j in project["scrape_configs"] if j["job_name"] == "inference"]
    assert {k: v for k, v in job.items() if k != "file_sd_configs"} == {
        k: v for k, v in static.items() if k != "static_configs"}  # same job, intervals and path


class RayPrometheus(Prometheus):
    """Prometheus with deploy/ray/prometheus.yml, the `inference` job discovering targets from `targets_dir`."""

    def __init__(self, binary: str, workdir: Path, targets_dir: Path) -> None:
        self._start(binary, workdir, lambda port: ray_scrape_config(targets_dir, port))

    def wait_all_scraped_after(self, moment: float, targets: int, intervals: int = 1, timeout: float = 30.0) -> None:
        """Every one of `targets` inference targets up, scraped more than `intervals` intervals after `moment`."""
        def done() -> bool:
            ups = self.query('timestamp(up{job="inference"} == 1)')
            return len(ups) == targets and all(float(s["value"][1]) > moment + intervals * SCRAPE_S for s in ups)
        self.wait_until(f"{targets} targets scraped", done, timeout)

    def total(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def prometheus(ray_service, tmp_path: Path) -> Iterator[RayPrometheus]:
    server = RayPrometheus(prometheus_binary(), tmp_path, ray_service.metrics_dir)
    try:
        server.wait_until("ready", lambda: httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200)
        yield server
    finally:
        server.stop()


def test_requests_counted_over_replicas_equal_requests_sent(ray_service, prometheus: RayPrometheus,
                                                            forecast_body: dict) -> None:
    targets = len(list(ray_service.metrics_dir.glob("*.json")))
    assert targets == 4, sorted(p.name for p in ray_service.metrics_dir.glob("*.json"))  # 2 traffic + 2 weld
    prometheus.wait_all_scraped_after(time.time(), targets)
    before = {s["metric"]["replica"]: float(s["value"][1])
              for s in prometheus.query(f"sum by (replica) ({COUNT})")}

    with httpx.Client(base_url=ray_service.url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post(ENDPOINT, json=forecast_body), range(N)))
    assert [a.status_code for a in answers] == [200] * N, [a.text for a in answers if a.status_code != 200][:3]
    served = Counter(a.headers["x-replica"].split("#", 1)[1] for a in answers)
    assert len(served) == 2, served

    prometheus.wait_all_scraped_after(time.time(), targets, intervals=2)  # two samples after: rate() has data
    after = {s["metric"]["replica"]: float(s["value"][1]) for s in prometheus.query(f"sum by (replica) ({COUNT})")}
    counted = {replica: after[replica] - before.get(replica, 0.0) for replica in after}
    total = prometheus.total(f"sum({COUNT})") - sum(before.values())
    series = prometheus.query(f'count by (replica) ({COUNT})')
    print(f"\n{N} requests; X-Replica {dict(served)}; Prometheus per replica {counted}, sum {total:g}, "
          f"{len(series)} replica series")
    assert total == N, (total, counted)
    assert {r: c for r, c in counted.items() if c} == dict(served), (counted, served)
    assert len(series) >= 2, series
    labels = prometheus.query(f'group by (deployment, replica, instance) ({COUNT})')
    assert {s["metric"]["deployment"] for s in labels} == {"traffic"}
    assert all(not k.startswith("__meta") for s in labels for k in s["metric"]), labels  # dropped by Prometheus

    # Dashboards and alerts with one series per replica: every expression evaluates (Prometheus refuses
    # vector matches that turn many-to-many), and those over the request metrics return data.
    checked = 0
    for panel in panel_queries():
        expr = substitute(panel.expr)
        result = prometheus.query(expr)
        if metric_names(panel.expr) <= REQUEST_METRICS and "model!=\"\"" in panel.expr and "code=~" not in expr:
            assert result, f"{panel.dashboard} / {panel.panel}: no data for {expr}"
            checked += 1
    for rule in alert_rules():
        prometheus.query(rule["expr"])
    per_endpoint = prometheus.query('sum by (endpoint) (rate(inference_request_duration_seconds_count'
                                    '{job="inference", model!=""}[20s]))')
    assert ENDPOINT in {s["metric"]["endpoint"] for s in per_endpoint}, per_endpoint
    up = prometheus.query('up{job="inference"}')
    assert len(up) == targets and {s["metric"]["replica"] for s in up} == {
        json.loads(p.read_text())[0]["labels"]["replica"] for p in ray_service.metrics_dir.glob("*.json")}
    print(f"{len(panel_queries())} panel queries and {len(alert_rules())} alert rules evaluated; "
          f"{checked} request panels returned data")
    assert checked > 0
