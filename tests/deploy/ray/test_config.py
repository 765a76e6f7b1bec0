"""deploy/ray/serve_config.yaml: valid for Ray Serve's schema, names the deployments build_app makes, and the
launcher's effective config builds into an application sized to the batchers (no cluster needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks.harness import ROOT

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")
from ray.serve._private.build_app import build_app as build_serve_app  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from deploy.ray.launch import effective_config  # noqa: E402
from deploy.ray.serve_app import build_app  # noqa: E402
from deploy.ray.topology import PREFIXES  # noqa: E402

pytestmark = pytest.mark.ray
CONFIG = ROOT / "deploy" / "ray" / "serve_config.yaml"


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_is_a_valid_serve_config_naming_every_family_deployment() -> None:
    schema = ServeDeploySchema.model_validate(_config())
    (app,) = schema.applications
    assert app.import_path == "deploy.ray.serve_app:build_app" and app.route_prefix == "/"
    names = {d.name for d in app.deployments}
    assert names == {"Ingress", *PREFIXES.values()}, names  # the names build_app gives its deployments
    for deployment in app.deployments:
        cpus = deployment.ray_actor_options.num_cpus
        assert 0 < cpus < 1, (deployment.name, cpus)  # fractional: every family's replicas fit two cores
    assert set(app.args) <= {"repository", "replicas", "ingress_replicas", "num_cpus", "num_gpus", "state_dir",
                             "metrics_dir", "graceful_shutdown_timeout_s", "settings", "families", "env",
                             "autoscaling", "max_ongoing_requests", "max_queued_requests"}


def test_effective_config_builds_an_app_sized_to_the_batchers(ray_repository: Path, tmp_path: Path) -> None:
    effective = effective_config(_config(), replicas=3, host="0.0.0.0", port=8123, repository=ray_repository,
                                 base=tmp_path)
    ServeDeploySchema.model_validate(effective)
    assert effective["http_options"] == {**_config()["http_options"], "host": "0.0.0.0", "port": 8123}
    (app,) = effective["applications"]
    args = app["args"]
    assert Path(args["state_dir"]) == tmp_path / "state" / "ray" and Path(args["repository"]) == ray_repository
    # The repository holds traffic and weld only: overrides of absent deployments would make Serve refuse it.
    assert {d["name"]: d["num_replicas"] for d in app["deployments"]} == {"Ingress": 1, "traffic": 3, "weld": 3}

    built = build_serve_app(build_app(args), name="service")
    deployments = {d.name: d for d in built.deployments}
    assert set(deployments) == {"Ingress", "traffic", "weld"}
    for family in ("traffic", "weld"):
        deployment = deployments[family]
        manifest = json.loads((ray_repository / family / "1" / "manifest.json").read_text())
        batch = manifest["batching"]["max_batch_size"]
        assert deployment.num_replicas == 3
        assert deployment.max_ongoing_requests >= 2 * batch > 5, (family, deployment.max_ongoing_requests, batch)
        assert deployment.max_queued_requests >= manifest["batching"].get("max_queue_size", 0)
        options = deployment.ray_actor_options
        assert options["num_cpus"] == args["num_cpus"] and "num_gpus" not in options
        assert options["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"


def test_autoscaling_and_gpu_share(ray_repository: Path, tmp_path: Path) -> None:
    args = {"repository": str(ray_repository), "state_dir": str(tmp_path), "num_cpus": 2, "num_gpus": 0.5,
            "autoscaling": {"min_replicas": 1, "max_replicas": 4}}
    built = {d.name: d for d in build_serve_app(build_app(args), name="service").deployments}
    traffic = built["traffic"]
    batch = json.loads((ray_repository / "traffic" / "1" / "manifest.json").read_text())["batching"]["max_batch_size"]
    scaling = traffic._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 4, batch)
    assert traffic.ray_actor_options["num_gpus"] == 0.5
    assert traffic.ray_actor_options["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"  # the CPU share


def test_replicas_auto_autoscales_every_family_sized_to_its_batcher(ray_repository: Path, tmp_path: Path) -> None:
    config = _config()
    assert config["http_options"]["request_timeout_s"] > 0 and config["http_options"]["keep_alive_timeout_s"] > 0
    effective = effective_config(config, replicas="auto", repository=ray_repository, base=tmp_path)
    (app,) = effective["applications"]
    # The config's fixed counts give way to the app's autoscaling (a num_replicas here would override it).
    assert [d for d in app["deployments"] if d["name"] != "Ingress" and "num_replicas" in d] == []
    built = {d.name: d for d in build_serve_app(build_app(app["args"]), name="service").deployments}
    assert built["Ingress"].num_replicas == 1
    for family in ("traffic", "weld"):
        batching = json.loads((ray_repository / family / "1" / "manifest.json").read_text())["batching"]
        scaling = built[family]._deployment_config.autoscaling_config
        assert (scaling.min_replicas, scaling.max_replicas) == tuple(app["args"]["autoscaling"][family].values())
        assert scaling.target_ongoing_requests == batching["max_batch_size"] * batching.get("instance_count", 1)
        # Two batches in flight per replica (at least 16): a replica at its cap is twice over target.
        assert built[family].max_ongoing_requests == max(16, 2 * scaling.target_ongoing_requests)
        assert scaling.upscale_delay_s < 30 and scaling.downscale_delay_s < 600  # quicker than Serve's defaults
    fixed = effective_config(config, replicas=2, repository=ray_repository, base=tmp_path)["applications"][0]
    built = {d.name: d for d in build_serve_app(build_app(fixed["args"]), name="service").deployments}
    assert built["traffic"].num_replicas == 2 and built["traffic"]._deployment_config.autoscaling_config is None
