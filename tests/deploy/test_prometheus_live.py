"""The real Prometheus server scrapes the real service with the project's scrape config and alert rules;
after traffic through every model and task endpoint, EVERY PromQL expression of every dashboard panel,
template variable and alert rule is run against Prometheus' HTTP API and must parse and return data.

The service runs on tests/conftest.py's tiny repository by default; DEPLOY_TEST_MODEL_REPOSITORY=<path>
points it at another one (e.g. the default models `make serve` builds) to cover every family's endpoints.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.deploy_prometheus import Prometheus, finite, free_port, scraping
from tests.fixtures.deploy_support import (
    DOCKER,
    alert_rules,
    metric_names,
    panel_queries,
    prometheus_binary,
    split_comparison,
    substitute,
    variable_queries,
)
from tests.fixtures.deploy_traffic import drive

pytestmark = pytest.mark.prometheus

ADMIN_TOKEN = "deploy-test-token"  # enables POST /v2/repository/index, which lists what the server serves
QUALITY_BOARD = "model-quality.json"
ROLLOUT_BOARD = "rollout.json"
QUALITY_ALERTS = {r["alert"] for r in alert_rules() if "quality_" in r["expr"]}
QUALITY_SKIP = "quality signals need ground truth and the families: test_quality_live.py checks them"
GPU_SKIP = "no GPU: the service exports gpu_* metrics only when NVML finds a device (see test_gpu.py)"


@pytest.fixture
def stack(live_server: Callable, tiny_repository: Path, tmp_path: Path) -> Iterator[tuple[str, Path, Prometheus]]:
    binary = prometheus_binary()  # skips before anything starts when Prometheus cannot be installed
    override = os.environ.get("DEPLOY_TEST_MODEL_REPOSITORY")
    repository = Path(override) if override else tiny_repository
    server = live_server(repository, env={"SERVICE_ADMIN_TOKEN": ADMIN_TOKEN})
    with scraping(binary, tmp_path, server.port) as prometheus:
        yield server.url, repository, prometheus


def test_every_dashboard_and_alert_query_returns_data(stack: tuple[str, Path, Prometheus],
                                                      subtests: pytest.Subtests) -> None:
    url, repository, prometheus = stack

    with subtests.test(msg="container health check script"):
        port = url.rsplit(":", 1)[1]
        probe = [sys.executable, str(DOCKER / "healthcheck.py")]
        ok = subprocess.run(probe, env={**os.environ, "PORT": port}, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and "/v2/health/ready -> 200" in ok.stdout, ok.stdout
        down = subprocess.run(probe, env={**os.environ, "PORT": str(free_port())}, capture_output=True, timeout=30)
        assert down.returncode == 1

    # Two rounds of traffic with scrapes in between: labelled series are born in the first round, so the
    # second one shows up as an increase in rate() (a series' first sample has no increase to show).
    started = time.monotonic()
    for round_ in range(2):
        report = drive(url, repository, ADMIN_TOKEN)
        print(f"traffic round {round_}: {time.monotonic() - started:.1f}s, models {report.models}, "
              f"statuses {report.statuses}")
        assert report.models, "the server serves no model"
        for model in report.models:
            assert report.statuses[f"POST /v2/models/{model}/infer"][200] > 0, report.statuses
        assert not report.server_errors(), f"server errors: {report.server_errors()}"
        traffic_done = time.time()
        prometheus.wait_scrape_after(traffic_done)  # two scrapes after each round
    with subtests.test(msg="scrape target healthy"):
        targets = prometheus.get("/api/v1/targets")["activeTargets"]
        inference = [t for t in targets if t["labels"]["job"] == "inference"]
        assert [t["health"] for t in inference] == ["up"], inference

    with subtests.test(msg="every endpoint that served a model appears in the per-endpoint panels"):
        served = {key.split(" ", 1)[1] for key, codes in report.statuses.items() if codes[200]
                  and not key.startswith("GET /v2/models/")}
        served = {"/v2/models/{model}/infer" if k.startswith("/v2/models/") else k for k in served}
        seen = {s["metric"]["endpoint"] for s in prometheus.query(
            'sum by (endpoint) (inference_request_duration_seconds_count{job="inference", model!=""})')}
        assert served <= seen, f"endpoints without a model label: {served - seen}"

    gpu = bool(prometheus.query("gpu_memory_total_bytes"))

    for board, name, query in variable_queries():
        with subtests.test(msg=f"{board} variable ${name}"):
            metric, label = query.removeprefix("label_values(").removesuffix(")").rsplit(",", 1)
            if not gpu and metric.startswith("gpu_"):
                pytest.skip(GPU_SKIP)
            values = prometheus.get(f"/api/v1/label/{label.strip()}/values", **{"match[]": substitute(metric)})
            assert values, f"{query} returned no values"

    for panel in panel_queries():
        with subtests.test(msg=f"{panel.dashboard} / {panel.panel} / {panel.ref}"):
            if panel.dashboard == QUALITY_BOARD:
                pytest.skip(QUALITY_SKIP)
            if panel.dashboard == ROLLOUT_BOARD:
                # No rollout runs here: the query must parse and evaluate; its data needs a live rollout, which
                # tests/platform/test_rollouts.py drives (and test_rollout_monitoring.py ties the series to it).
                prometheus.query(substitute(panel.expr))
                continue
            if not gpu and any(m.startswith("gpu_") for m in metric_names(panel.expr)):
                pytest.skip(GPU_SKIP)
            result = prometheus.query(substitute(panel.expr))
            assert result, f"no data for {panel.expr}"
            assert finite(result), f"only NaN/Inf for {panel.expr}: {result}"

    for rule in alert_rules():
        with subtests.test(msg=f"alert {rule['alert']}"):
            if rule["alert"] in QUALITY_ALERTS:
                pytest.skip(QUALITY_SKIP)
            signal, _, _ = split_comparison(rule["expr"])
            prometheus.query(rule["expr"])  # the full expression parses and evaluates (firing or not)
            result = prometheus.query(signal)
            assert result, f"{rule['alert']}: no data for its signal {signal}"
            assert finite(result), f"{rule['alert']}: only NaN/Inf for {signal}: {result}"

    with subtests.test(msg="Prometheus evaluated every alert rule without error"):
        def evaluated() -> bool:
            rules = [r for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
            return len(rules) == len(alert_rules()) and all(
                r["health"] == "ok" and r["lastEvaluation"] > time.strftime(
                    "%Y-%m-%dT%H:%M:%S", time.gmtime(traffic_done)) for r in rules)
        prometheus.wait_until("rules evaluated", evaluated, timeout=10)
        groups = prometheus.get("/api/v1/rules")["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} == {r["alert"] for r in alert_rules()}
        firing = [a for a in prometheus.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] in
                  {"InferenceTargetDown", "InferenceModelNotReady", "InferenceHighErrorRate"}]
        assert not firing, f"a healthy service raised alerts: {firing}"
