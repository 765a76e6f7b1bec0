"""Issue 31 item 4: the rollout rules (docker/prometheus/rollout_alerts.yml) pass `promtool check rules` and
their unit tests, a weakened rule fails those tests, Prometheus loads the file, and the rules and the "Rollout"
dashboard use only series the service exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.deploy_support import (
    DOCKER,
    PROMETHEUS_YML,
    ROOT,
    dashboards,
    exported_names,
    iter_panels,
    load_yaml,
    metric_names,
)

RULES = DOCKER / "prometheus" / "rollout_alerts.yml"
RULES_TEST = DOCKER / "prometheus" / "tests" / "rollout_alerts_test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    from tests.fixtures.deploy_support import prometheus_binary

    return prometheus_binary("promtool")


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_rollout_rules_check_and_unit_tests_pass(promtool: str) -> None:
    checked = _run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _run(promtool, "test", "rules", str(RULES_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_weakened_rule_fails_the_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: with the margin raised from 5 % to 50 %, the 20 %-worse candidate is quiet."""
    (tmp_path / "tests").mkdir()
    text = RULES.read_text()
    assert "> 1.05 * max by (job, model) (rollout:forecast_mae:rate10m" in text
    (tmp_path / RULES.name).write_text(text.replace("> 1.05 * max by (job, model) (rollout:forecast_mae",
                                                    "> 1.5 * max by (job, model) (rollout:forecast_mae"))
    shutil.copy(RULES_TEST, tmp_path / "tests" / RULES_TEST.name)
    tested = _run(promtool, "test", "rules", str(tmp_path / "tests" / RULES_TEST.name))
    assert tested.returncode != 0 and "RolloutCandidateWorseForecastError" in tested.stdout + tested.stderr


def test_prometheus_and_compose_load_the_rollout_rules() -> None:
    assert "rollout_alerts.yml" in load_yaml(PROMETHEUS_YML)["rule_files"]
    volumes = load_yaml(DOCKER / "docker-compose.yml")["services"]["prometheus"]["volumes"]
    assert "./prometheus/rollout_alerts.yml:/etc/prometheus/rollout_alerts.yml:ro" in volumes


def test_rules_and_dashboard_use_exported_series_and_compare_roles() -> None:
    exported = exported_names()
    rules = [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]
    used = set().union(*(metric_names(rule["expr"]) for rule in rules))
    recorded = {rule["record"] for rule in rules if "record" in rule}
    assert used - recorded <= exported, sorted(used - recorded - exported)
    assert {rule["alert"] for rule in rules if "alert" in rule} == {
        "RolloutCandidateWorseForecastError", "RolloutCandidateMoreOutOfDistribution", "RolloutCandidateWorseSelfCheck"}
    assert all(rule.get("for") == "30m" for rule in rules if "alert" in rule)
    board = dashboards()["rollout.json"]
    assert board["title"] == "Rollout: baseline vs candidate"
    exprs = [t["expr"] for p in iter_panels(board["panels"]) for t in p.get("targets", [])]
    names = set().union(*(metric_names(e) for e in exprs))
    assert names <= exported, sorted(names - exported)
    joined = " ".join(exprs)
    for needle in ("rollout_requests_total", "rollout_request_duration_seconds_bucket", "rollout_shadow_dropped_total",
                   "rollout_version_role", "quality_forecast_abs_error_total", "quality_ood_samples_total",
                   "rollout_shadow_abs_difference_total", "rollout_shadow_agreed_total", "rollout_percent"):
        assert needle in joined, needle
