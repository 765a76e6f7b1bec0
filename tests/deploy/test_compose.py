"""Static checks of docker/: the compose files validate against the compose specification's JSON schema,
every mounted file exists, and ports, health checks, service names and paths agree across the compose
file, the Dockerfiles, Prometheus' scrape config and Grafana's provisioning. (No Docker engine here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.fixtures.deploy_support import (
    COMPOSE,
    COMPOSE_CPU,
    COMPOSE_SCHEMA,
    DOCKER,
    PROMETHEUS_YML,
    PROVISIONING,
    ROOT,
    ROOT_COMPOSE,
    load_yaml,
    merge_compose,
    parse_dockerfile,
    volume_mounts,
)

VALIDATOR = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))


def _errors(model: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(model)]


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def test_vendored_schema_is_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "include"} <= set(schema["properties"])
    VALIDATOR.check_schema(schema)


@pytest.mark.parametrize("path", [COMPOSE, ROOT_COMPOSE], ids=lambda p: p.name)
def test_compose_file_validates_against_schema(path: Path) -> None:
    assert _errors(load_yaml(path)) == []


def test_schema_rejects_a_broken_compose_file(compose: dict) -> None:
    """The validation can fail: a misspelt key and a wrong type are reported."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["inference"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["grafana"]["ports"] = "3000:3000"
    errors = _errors(broken)
    assert any("intervall" in e for e in errors), errors
    assert any(e.startswith("services/grafana/ports") for e in errors), errors


def test_cpu_override_validates_and_drops_the_gpu(compose: dict) -> None:
    merged = merge_compose(compose, load_yaml(COMPOSE_CPU))
    assert _errors(merged) == []
    inference = merged["services"]["inference"]
    assert "deploy" not in inference, "the CPU variant must not reserve a GPU"
    assert inference["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cpu"}
    assert inference["environment"]["SERVICE_DEVICE"] == "cpu"
    assert merged["services"]["models-init"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert merged["services"]["models-init"]["image"] == inference["image"] == "research-serving:cpu"


def test_root_compose_includes_the_stack() -> None:
    root = load_yaml(ROOT_COMPOSE)
    included = [ROOT / (item if isinstance(item, str) else item["path"]) for item in root["include"]]
    assert included == [COMPOSE]


def test_gpu_reservation(services: dict) -> None:
    devices = services["inference"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_build_contexts_and_dockerfiles_exist(services: dict) -> None:
    for name, service in services.items():
        if "build" not in service:
            continue
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        assert (context / service["build"]["dockerfile"]).is_file(), name


def test_every_bind_mount_exists_and_volumes_are_declared(compose: dict, services: dict) -> None:
    declared = set(compose["volumes"])
    for name, service in services.items():
        for source, target in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: mounted {source} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} not declared"
            assert target.startswith("/"), f"{name}: {target}"
    used = {source for service in services.values() for source, _ in volume_mounts(service)}
    assert declared <= used, f"declared but unused volumes: {declared - used}"


def test_service_image_matches_dockerfile(services: dict) -> None:
    """Port, environment, model repository mount and health check of the compose service are the image's."""
    instructions = parse_dockerfile(DOCKER / "Dockerfile")
    expose = [i.args for i in instructions if i.keyword == "EXPOSE"]
    healthcheck = next(i.args for i in instructions if i.keyword == "HEALTHCHECK")
    inference = services["inference"]
    published, container_port = inference["ports"][0].rsplit(":", 1)
    assert expose == [container_port] == [inference["environment"]["PORT"]]
    assert inference["environment"]["HOST"] == "0.0.0.0"
    repository = inference["environment"]["SERVICE_MODEL_REPOSITORY"]
    assert any(target == repository for _, target in volume_mounts(inference))
    state = inference["environment"]["SERVICE_STATE_DIR"]
    assert any(target == state for _, target in volume_mounts(inference))
    # Same probe, same timings, in the image and in compose.
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert probe == inference["healthcheck"]["test"][1:]
    for option in ("interval", "timeout", "start_period", "retries"):
        flag = f"--{option.replace('_', '-')}={inference['healthcheck'][option]}"
        assert flag in healthcheck, f"{flag} not in Dockerfile HEALTHCHECK {healthcheck}"


def test_models_init_writes_the_volume_the_service_reads(services: dict) -> None:
    init, inference = services["models-init"], services["inference"]
    assert init["build"] == inference["build"] and init["image"] == inference["image"]
    assert init["volumes"][0] == inference["volumes"][0]
    command = init["command"]
    assert command[:3] == ["python", "-m", "export.defaults"]
    assert command[command.index("--repository") + 1] == inference["environment"]["SERVICE_MODEL_REPOSITORY"]
    # Scratch space must be writable by the image's non-root user: /app is not.
    assert command[command.index("--workdir") + 1].startswith("/tmp/")
    # Every option the command passes is one that `python -m export.defaults` accepts.
    usage = subprocess.run([sys.executable, "-m", "export.defaults", "--help"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    for option in (arg for arg in command[3:] if arg.startswith("--")):
        assert option in usage, f"export.defaults has no {option}"


def test_health_based_startup_order(services: dict) -> None:
    completed = {"condition": "service_completed_successfully"}
    assert services["inference"]["depends_on"] == {"models-init": completed}
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert services["prometheus"]["depends_on"]["inference"]["condition"] in {"service_started",
                                                                              "service_healthy"}
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no health check"
        if name != "models-init":
            assert "healthcheck" in service, f"{name} has no health check"


def test_healthcheck_ports_match_published_ports(services: dict) -> None:
    for name in ("prometheus", "grafana"):
        service = services[name]
        container_port = service["ports"][0].rsplit(":", 1)[1]
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{container_port}/" in probe, f"{name}: {probe} vs port {container_port}"


def test_prometheus_config_retention_and_mounts(services: dict) -> None:
    prometheus = services["prometheus"]
    flags = dict(arg.partition("=")[::2] for arg in prometheus["command"])
    mounts = dict(volume_mounts(prometheus))
    config_target = flags["--config.file"]
    assert DOCKER / mounts_source(mounts, config_target) == PROMETHEUS_YML
    assert flags["--storage.tsdb.retention.time"].startswith("${PROMETHEUS_RETENTION_TIME:-")
    assert "--storage.tsdb.retention.size" in flags
    assert any(target == flags["--storage.tsdb.path"] for target in mounts.values())
    # rule_files are relative to the config file: each must be mounted beside it.
    config_dir = Path(config_target).parent
    for rule_file in load_yaml(PROMETHEUS_YML)["rule_files"]:
        target = str(config_dir / rule_file)
        source = (DOCKER / mounts_source(mounts, target)).resolve()
        assert source == (PROMETHEUS_YML.parent / rule_file).resolve()


def mounts_source(mounts: dict[str, str], target: str) -> str:
    sources = [source for source, t in mounts.items() if t == target]
    assert sources, f"nothing mounted at {target}"
    return sources[0]


def test_scrape_target_is_the_service(services: dict) -> None:
    config = load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["inference"]["static_configs"][0]["targets"]
    container_port = services["inference"]["ports"][0].rsplit(":", 1)[1]
    assert targets == [f"inference:{container_port}"]
    assert jobs["inference"]["metrics_path"] == "/metrics"
    grafana_port = services["grafana"]["ports"][0].rsplit(":", 1)[1]
    assert jobs["grafana"]["static_configs"][0]["targets"] == [f"grafana:{grafana_port}"]


def test_grafana_provisioning_matches_compose(services: dict) -> None:
    grafana = services["grafana"]
    mounts = dict(volume_mounts(grafana))
    assert (DOCKER / mounts_source(mounts, "/etc/grafana/provisioning")).resolve() == PROVISIONING
    datasources = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert [d["uid"] for d in datasources] == ["prometheus"]
    prometheus_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasources[0]["url"] == f"http://prometheus:{prometheus_port}"
    # $__rate_interval is derived from timeInterval: it must be the service's scrape interval.
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_YML)["scrape_configs"]}
    assert datasources[0]["jsonData"]["timeInterval"] == jobs["inference"]["scrape_interval"]
    provider = load_yaml(PROVISIONING / "dashboards" / "dashboards.yml")["providers"][0]
    dashboards_source = DOCKER / mounts_source(mounts, provider["options"]["path"])
    assert sorted(dashboards_source.glob("*.json")), "no dashboards in the provisioned folder"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards_source / Path(home).relative_to(provider["options"]["path"])).is_file()


def test_grafana_anonymous_access_is_read_only(services: dict) -> None:
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
