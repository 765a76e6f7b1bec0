"""Prometheus configuration and alert rules (promtool: check config, check rules, rule unit tests) and the
Grafana dashboards (generated files up to date, stable uids, the panels the issue asks for, only metric
names the service exports)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.deploy_support import (
    ALERTS_TEST_YML,
    ALERTS_YML,
    DOCKER,
    PROMETHEUS_YML,
    ROOT,
    alert_rules,
    dashboards,
    exported_names,
    iter_panels,
    metric_names,
    panel_queries,
    prometheus_binary,
    split_comparison,
    variable_queries,
)


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus_binary("promtool")


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.prometheus
def test_promtool_check_config(promtool: str) -> None:
    result = _promtool(promtool, "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "2 rule files found" in result.stdout  # alerts.yml, rollout_alerts.yml


@pytest.mark.prometheus
def test_promtool_check_rules(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", str(ALERTS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.prometheus
def test_alert_rule_unit_tests(promtool: str) -> None:
    """Each alert fires on synthetic series that should trigger it, and not on healthy neighbours."""
    result = _promtool(promtool, "test", "rules", str(ALERTS_TEST_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST_YML.read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert needs a unit test"


@pytest.mark.prometheus
def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS_YML.read_text().replace('up{job="inference"} == 0', 'up{job="inference" == 0'))
    assert _promtool(promtool, "check", "rules", str(broken)).returncode != 0


def test_alerts_cover_the_required_conditions() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == {"InferenceHighP99Latency", "InferenceHighErrorRate", "InferenceSustainedQueueFull",
                          "InferenceModelNotReady", "InferenceTargetDown", "TrafficForecastWorseThanNaive",
                          "WeldOutOfDistribution", "InputDrift"}
    naive = rules["TrafficForecastWorseThanNaive"]
    assert 'predictor="last_value"' in naive["expr"] and naive["for"] == "30m"
    assert "quality_ood_ratio" in rules["WeldOutOfDistribution"]["expr"]
    assert "quality_training_statistic_mean" in rules["InputDrift"]["expr"]
    p99 = rules["InferenceHighP99Latency"]["expr"]
    assert "histogram_quantile(0.99" in p99 and "inference_request_duration_seconds_bucket" in p99
    assert 'reason="queue_full"' in rules["InferenceSustainedQueueFull"]["expr"]
    assert "model_ready" in rules["InferenceModelNotReady"]["expr"]
    assert rules["InferenceTargetDown"]["expr"].strip() == 'up{job="inference"} == 0'
    for name, rule in rules.items():
        split_comparison(rule["expr"])  # each is `signal OP threshold`
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert "for" in rule, f"{name} must be sustained, not a single evaluation"


def test_split_comparison_ignores_matchers_and_nesting() -> None:
    assert split_comparison('sum by (a) (rate(x{code!="5..", a=~"b"}[5m])) / y > 0.05') == (
        'sum by (a) (rate(x{code!="5..", a=~"b"}[5m])) / y', ">", "0.05")
    assert split_comparison("max(m) == 0")[1] == "=="
    with pytest.raises(AssertionError):
        split_comparison('rate(x{a!="b"}[5m])')


def test_dashboards_are_generated_from_the_source() -> None:
    result = subprocess.run([sys.executable, str(DOCKER / "grafana" / "generate_dashboards.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dashboard_uids_titles_and_datasource() -> None:
    boards = dashboards()
    assert set(boards) == {"serving-overview.json", "serving-batching.json", "serving-gpu.json",
                           "model-quality.json", "rollout.json"}  # rollout: issue 31
    uids = [board["uid"] for board in boards.values()]
    assert uids == [name.removesuffix(".json") for name in boards] and len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board["id"] is None and board["editable"] is False, name
        ids = [panel["id"] for panel in iter_panels(board["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in iter_panels(board["panels"]):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_template_variables_for_model_and_instance() -> None:
    variables = {(board, var) for board, var, _ in variable_queries()}
    for board in ("serving-overview.json", "serving-batching.json"):
        assert {(board, "model"), (board, "instance")} <= variables
    assert {("serving-gpu.json", "instance"), ("serving-gpu.json", "device")} <= variables
    for board, var, _ in variable_queries():
        used = [q.expr for q in panel_queries() if q.dashboard == board and f"${var}" in q.expr]
        assert used, f"{board}: variable ${var} is not used by any panel"


def test_dashboards_use_only_exported_metric_names() -> None:
    exported = exported_names()
    used: set[str] = set()
    for query in panel_queries():
        names = metric_names(query.expr)
        assert names, f"{query.panel}: no metric in {query.expr}"
        used |= names
    for _, _, query in variable_queries():
        used |= metric_names(query.removeprefix("label_values(")) - {"label_values"}
    for rule in alert_rules():
        used |= metric_names(rule["expr"])
    unknown = used - exported
    assert not unknown, f"not exported by service/metrics.py: {sorted(unknown)}"


def test_dashboards_show_what_the_issue_asks_for() -> None:
    exprs = {q.panel: q.expr for q in panel_queries()}
    by_panel: dict[str, list[str]] = {}
    for query in panel_queries():
        by_panel.setdefault(query.panel, []).append(query.expr)

    def has(panel: str, *needles: str) -> None:
        assert panel in by_panel, f"missing panel {panel!r}; have {sorted(exprs)}"
        text = " ".join(by_panel[panel])
        for needle in needles:
            assert needle in text, f"{panel}: {needle!r} not in {text}"

    for per in ("endpoint", "model"):
        panel = f"Latency p50 / p95 / p99 per {per}"
        has(panel, "rate(inference_request_duration_seconds_bucket", f"by ({per}, le)")
        quantiles = [e.split(",")[0] for e in by_panel[panel]]
        assert quantiles == [f"histogram_quantile({q}" for q in (0.5, 0.95, 0.99)]
    has("Request rate per endpoint", "inference_request_duration_seconds_count")
    has("Server error ratio per model", 'code=~"5.."')
    has("429 rate (queue full) per model", 'reason="queue_full"')
    has("504 rate (deadline) per model", 'reason="deadline"')
    has("Batch size distribution", "inference_batch_size_bucket")
    has("Queue depth", "inference_queue_depth")
    has("Queue wait p50 / p95 / p99", "inference_queue_wait_seconds_bucket")
    has("Compute time per batch p50 / p95 / p99", "inference_compute_seconds_bucket")
    has("Model versions loaded", "model_ready")
    has("Model load time (open + warm-up)", "model_load_duration_seconds")
    has("GPU memory used", "gpu_memory_used_bytes", "by (instance, device)")
    has("GPU utilisation", "gpu_utilization_ratio", "by (instance, device)")
    has("MAE per horizon step (model vs last value)", "quality_forecast_abs_error_total", "horizon",
        'predictor="last_value"')
    has("RMSE per horizon step", "sqrt(", "quality_forecast_squared_error_total")
    has("MAPE per horizon step", "quality_forecast_abs_percentage_error_total")
    has("Skill vs naive (1 - MAE / MAE of last value)", "1 - ", 'predictor="last_value"')
    has("OOD share (recent samples)", "quality_ood_ratio")
    has("Nearest-neighbour distance p50 / p95 per predicted class, and the OOD threshold",
        "quality_nearest_distance_bucket", "by (model, class, le)", "quality_ood_threshold")
    has("Predicted classes", "quality_predictions_total")
    has("Drift: (live mean - training mean) / training std", "quality_training_statistic_std")

